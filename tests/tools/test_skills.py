"""Skills: SKILL.md files from the shipped folder and the owner's, names and
descriptions for the prompt, bodies only through the skill tool and only the agent's own;
and the agent file's grants for the new tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import tools
from agents.definition import AgentFileError, parse_agent
from agents.skills import SHIPPED, Skills
from agents.tools import ToolCall, ToolContext


def write_skill(folder: Path, name: str, text: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "SKILL.md").write_text(text)


def test_shipped_skills_load_and_use_only_shipped_tools() -> None:
    skills = Skills([SHIPPED])
    assert skills.errors == [] and set(skills.skills) == {"web-notes", "daily-log", "url-watch"}
    for skill in skills.skills.values():
        used = {t for t in tools.TOOLS if f"`{t}`" in skill.body}
        assert used and used <= set(tools.TOOLS), skill.name


def test_prompt_sees_descriptions_not_bodies(tmp_path: Path) -> None:
    skills = Skills([SHIPPED])
    prompt = skills.describe(["daily-log"])
    assert "daily-log: Keep a daily log file" in prompt and "web-notes" not in prompt
    assert skills.skills["daily-log"].body not in prompt
    assert skills.describe([]) == ""


def test_owner_skills_replace_shipped_and_bad_files_are_reported(tmp_path: Path) -> None:
    write_skill(tmp_path, "daily-log", "---\nname: daily-log\ndescription: My own log.\n---\nWrite to diary.md.\n")
    write_skill(tmp_path, "broken", "no front matter here")
    write_skill(tmp_path, "wrong-folder", "---\nname: other\ndescription: x\n---\nbody\n")
    write_skill(tmp_path, "silent", "---\nname: silent\n---\nbody\n")
    skills = Skills([SHIPPED, tmp_path])
    assert skills.skills["daily-log"].body == "Write to diary.md."
    assert len(skills.errors) == 3
    assert any("front matter" in e for e in skills.errors)
    assert any("folder is named wrong-folder" in e for e in skills.errors)
    assert any("key 'description': required" in e for e in skills.errors)


async def test_skill_tool_loads_only_the_agents_skills() -> None:
    skills = Skills([SHIPPED])
    ctx = ToolContext("telegram", "1", "1", "assistant", "UTC", skills=skills, allowed_skills=("web-notes",))
    body = await tools.run_call(ToolCall("skill", {"name": "web-notes"}), ["skill"], ctx)
    assert "Call `web_fetch`" in body
    other = await tools.run_call(ToolCall("skill", {"name": "daily-log"}), ["skill"], ctx)
    assert other.startswith("error: skill 'daily-log' is not one you may use")
    assert (await tools.run_call(ToolCall("skill", {"name": "web-notes"}), [], ctx)).startswith("error: unknown tool")


def test_agent_file_grants() -> None:
    agent = parse_agent({"name": "a", "system_prompt": "x", "tools": ["files", "web_fetch", "run", "skill", "wx.*", "wx.forecast"],
                         "skills": ["web-notes"]}, "a.toml")
    assert agent.skills == ["web-notes"]
    assert parse_agent({"name": "a", "system_prompt": "x"}, "a.toml").tools == []  # denied by default
    for bad, problem in [({"tools": ["shell"]}, "unknown tool 'shell'"), ({"tools": ["WX.*"]}, "unknown tool 'WX.*'"),
                         ({"skills": ["web-notes"]}, 'needs the "skill" tool'),
                         ({"tools": ["skill"], "skills": ["Web Notes"]}, "skill name 'Web Notes'")]:
        with pytest.raises(AgentFileError, match=problem):
            parse_agent({"name": "a", "system_prompt": "x", **bad}, "a.toml")


def test_config_sections_name_the_key() -> None:
    from aibox.config import ConfigError, parse_config

    config = parse_config({"mcp": {"servers": {"wx": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "env:WX"}}}},
                           "tools": {"run": {"network_agents": ["coder"]}, "web_fetch": {"allow_hosts": ["nas.local"]}}})
    assert config.mcp.servers["wx"].headers["Authorization"].describe() == "env:WX"
    assert config.tools.run.network_agents == ["coder"] and config.tools.run.max_processes == 32
    for bad, key in [({"mcp": {"servers": {"wx": {}}}}, "mcp.servers.wx"),
                     ({"mcp": {"servers": {"wx": {"command": "x", "url": "http://a/"}}}}, "mcp.servers.wx"),
                     ({"mcp": {"servers": {"Wx": {"command": "x"}}}}, "mcp.servers"),
                     ({"tools": {"run": {"timeout": 1}}}, "tools.run.timeout"),
                     ({"tools": {"web_fetch": {"max_redirects": 99}}}, "tools.web_fetch.max_redirects")]:
        with pytest.raises(ConfigError, match=f"key '{key}'"):
            parse_config(bad)
