"""The chat commands a person can use, as menus and greetings list them.

The agent runner carries the commands out; this list is what the platforms show:
Telegram's command menu (`setMyCommands` at start) and the greeting `/start` gets from
the gateway, so a newcomer sees what the box can do without asking the model.
"""

from __future__ import annotations

COMMANDS: tuple[tuple[str, str], ...] = (
    ("help", "what the box can do"),
    ("agents", "list the agents (owner and admins)"),
    ("use", "talk to another agent: /use NAME"),
    ("model", "pick the model for this chat: /model NAME or auto"),
    ("reset", "start a fresh conversation"),
    ("remember", "pin a note: /remember TEXT"),
    ("forget", "list or drop notes: /forget ID or all"),
    ("history", "the last turns: /history N"),
    ("remind", "a reminder: /remind WHEN WHAT"),
    ("jobs", "scheduled jobs in this chat"),
    ("cancel", "stop a long answer, or a job: /cancel ID"),
)


def greeting() -> str:
    """The answer to `/start`: who this is, then the commands, one a line."""
    lines = "\n".join(f"/{name}: {what}" for name, what in COMMANDS)
    return f"Hi! I'm this AI box's assistant: just write to me. Commands:\n{lines}"
