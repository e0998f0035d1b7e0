from aibox.cli.main import main

main()
