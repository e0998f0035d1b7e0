# The two set-up commands of the README: `make run` and `make test`.
VENV ?= .venv

.PHONY: install install-test run test

install:
	./scripts/install.sh

install-test:
	./scripts/install.sh test

run: install
	$(VENV)/bin/aibox run

test: install-test
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
