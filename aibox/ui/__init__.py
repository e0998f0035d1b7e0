"""The box's own page: server-rendered HTML for the control page and web chat (templates/,
static/), its login (one-time links, sessions, CSRF), the speed chart drawn as SVG and the
figures it shows. The routes that serve it live in aibox/api/ui.py.
May import: aibox.store, models."""
