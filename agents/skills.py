"""Skills: SKILL.md files, instructions an agent loads only when a task needs them.

A skill is a folder with a SKILL.md: front matter between `---` lines holding `name`
and `description`, the instructions below. The shipped ones are in agents/skills/, the
owner's in `<state_dir>/skills/` (same name replaces a shipped one). The system prompt
names each skill the agent may use with its one-line description; the body comes back
from the `skill` tool, so a small local context window is not filled up front.
May import: agents.definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agents.definition import NAME_RE

SHIPPED = Path(__file__).parent / "skills"
MAX_BODY_CHARS = 8000


class SkillError(ValueError):
    """A SKILL.md that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    body: str
    path: Path


def parse_skill(path: Path) -> Skill:
    text = path.read_text(encoding="utf-8")
    match = re.match(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", text, re.S)
    if not match:
        raise SkillError(f"{path}: needs front matter between '---' lines with name and description")
    fields: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if not sep:
                raise SkillError(f"{path}: front matter line {line.strip()!r} is not 'key: value'")
            fields[key.strip()] = value.strip().strip("\"'")
    name, description, body = fields.get("name", ""), fields.get("description", ""), match.group(2).strip()
    if not NAME_RE.match(name):
        raise SkillError(f"{path}: key 'name': {name!r} must be lower-case letters, digits, '-' or '_'")
    if path.parent.name != name:
        raise SkillError(f"{path}: key 'name': is {name!r} but the folder is named {path.parent.name}")
    if not description:
        raise SkillError(f"{path}: key 'description': required (the model chooses skills by it)")
    if not body:
        raise SkillError(f"{path}: the instructions below the front matter are empty")
    if len(body) > MAX_BODY_CHARS:
        raise SkillError(f"{path}: the instructions are {len(body)} characters; the limit is {MAX_BODY_CHARS}")
    return Skill(name, description, body, path)


class Skills:
    """The skills found in the shipped folder and the owner's; `errors` holds the files refused."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self.skills: dict[str, Skill] = {}
        self.errors: list[str] = []
        self.reload()

    def reload(self) -> None:
        skills, errors = {}, []
        for folder in self.folders:
            for path in sorted(folder.glob("*/SKILL.md")):
                try:
                    skill = parse_skill(path)
                except (SkillError, OSError, UnicodeDecodeError) as e:
                    errors.append(str(e))
                    continue
                skills[skill.name] = skill
        self.skills, self.errors = skills, errors

    def describe(self, allowed: list[str]) -> str:
        """The lines the system prompt gets: each allowed skill's name and description."""
        usable = [self.skills[n] for n in allowed if n in self.skills]
        if not usable:
            return ""
        lines = ['Skills (load one with the skill tool, {"name": NAME}, before doing that kind of task):']
        lines += [f"- {s.name}: {s.description}" for s in usable]
        return "\n".join(lines)

    def load(self, name: str, allowed: list[str]) -> str:
        if name not in allowed:
            return f"error: skill {name!r} is not one you may use; yours: {', '.join(allowed) or 'none'}"
        skill = self.skills.get(name)
        if skill is None:
            return f"error: skill {name!r} is not installed"
        return f"Skill {skill.name}: follow these instructions.\n\n{skill.body}"
