"""Agent files: the shipped ones load, bad ones are refused naming the key and the problem,
and the registry keeps working around a broken user file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.registry import Registry, RegistryError
from agents.definition import AgentFileError, load_agent
from aibox.store import Store

SHIPPED = Path(__file__).parents[2] / "agents"
GOOD = """
name = "helper"
description = "test helper"
system_prompt = "Be brief."
tools = ["time"]
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_agents_load_and_assistant_is_the_default(tmp_path: Path) -> None:
    names = {load_agent(p).name for p in SHIPPED.glob("*.toml")}
    assert {"assistant", "coder", "briefing"} <= names
    registry = Registry(Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}"), tmp_path / "agents")
    assert registry.default().name == "assistant"
    assert registry.problems == {}
    briefing = registry.get("briefing").definition
    assert briefing.schedules and briefing.schedules[0].when == "every day at 7:00"
    assert registry.get("coder").definition.model.policy == "pinned"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('name = "x"\nsystem_prompt = "a"\n[model]\npolicy = "pinned"\n', "key 'model.name': required when model.policy is \"pinned\""),
        ('name = "x"\nsystem_prompt = "a"\ntools = ["shell"]\n', "key 'tools': unknown tool 'shell'"),
        ('name = "x"\n', "key 'system_prompt': Field required"),
        ('name = "x"\nsystem_prompt = "a"\ncolour = "blue"\n', "key 'colour': unknown key"),
        ('name = "x"\nsystem_prompt = "a"\n[memory]\nrecent_turns = 0\n', "key 'memory.recent_turns'"),
        ('name = "x"\nsystem_prompt = "a"\n[[schedules]]\nwhen = "whenever"\ntask = "t"\nchat = "telegram:1"\n',
         "key 'schedules.0.when': no schedule found"),
        ('name = "x"\nsystem_prompt = "a"\n[[schedules]]\nwhen = "every day at 7"\ntask = "t"\nchat = "1"\n',
         "key 'schedules.0.chat'"),
        ('name = "x"\nsystem_prompt = \n', "not valid TOML"),
    ],
)
def test_invalid_files_are_refused_with_key_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, "x", text)
    with pytest.raises(AgentFileError) as e:
        load_agent(path)
    assert str(e.value).startswith("x.toml: ")
    assert problem in str(e.value)


def test_file_name_must_match_agent_name(tmp_path: Path) -> None:
    with pytest.raises(AgentFileError, match=r"key 'name': is 'helper' but the file is named other.toml"):
        load_agent(write(tmp_path, "other", GOOD))


def test_registry_user_agents_enable_disable_and_broken_files(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    user = tmp_path / "agents"
    write(user, "broken", 'name = "broken"\n')
    registry = Registry(store, user)
    assert list(registry.problems.values()) == ["broken.toml: key 'system_prompt': Field required"]
    added = registry.add(write(tmp_path / "incoming", "helper", GOOD))
    assert (added.source, added.enabled) == ("user", True)
    registry.set_enabled("assistant", False)
    assert Registry(store, user).enabled("assistant") is None, "disabled state must survive a restart"
    assert registry.default().name == "briefing", "first enabled agent when the default is off"
    assert registry.default(preferred="helper").name == "helper"
    with pytest.raises(RegistryError, match="shipped agent"):
        registry.remove("coder")
    registry.remove("helper")
    with pytest.raises(RegistryError, match="no agent named 'helper'"):
        registry.get("helper")
