"""Running a box: the systemd service (and its unit, shipped as aibox/ops/systemd), backups, doctor's checks and the security check of the settings.
May import: aibox.config, aibox.secrets, aibox.store, models, connectors.manager, agents.registry (never aibox.daemon)."""
