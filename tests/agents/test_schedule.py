"""Plain-language schedules: the common forms, parsed the same way every time, with the
next run times the user is shown."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agents import schedule
from agents.pronouns import second_person
from agents.schedule import ScheduleError, is_job_request, next_runs, parse_request

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 11, 29, 16, 30, tzinfo=UTC)  # a Sunday


def runs(text: str, tz: str = "UTC", n: int = 3) -> tuple[str, str, str, list[str]]:
    r = parse_request(text, tz, NOW)
    return r.kind, r.task, r.when.description, [d.isoformat() for d in next_runs(r.when, n, NOW)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("remind me every weekday at 8:00 to stretch",
         ("remind", "stretch", "every weekday at 08:00 (UTC)",
          ["2026-11-30T08:00:00+00:00", "2026-12-01T08:00:00+00:00", "2026-12-02T08:00:00+00:00"])),
        ("every Monday at 9 summarise my notes",
         ("ask", "summarise my notes", "every Monday at 09:00 (UTC)",
          ["2026-11-30T09:00:00+00:00", "2026-12-07T09:00:00+00:00", "2026-12-14T09:00:00+00:00"])),
        ("in 20 minutes tell me to check the oven",
         ("remind", "check the oven", "once at 2026-11-29 16:50 (UTC)", ["2026-11-29T16:50:00+00:00"])),
        ("remind me to call mum tomorrow at 9am",
         ("remind", "call mum", "once at 2026-11-30 09:00 (UTC)", ["2026-11-30T09:00:00+00:00"])),
        ("every 2 hours drink water",
         ("ask", "drink water", "every 2 hours (UTC)",
          ["2026-11-29T18:30:00+00:00", "2026-11-29T20:30:00+00:00", "2026-11-29T22:30:00+00:00"])),
        ("cron 0 8 * * 1-5 check the news",  # cron weekdays count from Sunday = 0
         ("ask", "check the news", "cron 0 8 * * 1-5 (UTC)",
          ["2026-11-30T08:00:00+00:00", "2026-12-01T08:00:00+00:00", "2026-12-02T08:00:00+00:00"])),
        ("every weekend at 10:30pm remind me to water the plants",
         ("remind", "water the plants", "every weekend day at 22:30 (UTC)",
          ["2026-11-29T22:30:00+00:00", "2026-12-05T22:30:00+00:00", "2026-12-06T22:30:00+00:00"])),
        ("on 2026-12-24 at 10:00 remind me to buy a tree",
         ("remind", "buy a tree", "once at 2026-12-24 10:00 (UTC)", ["2026-12-24T10:00:00+00:00"])),
        ("at 18:00 tell me dinner is ready",
         ("remind", "dinner is ready", "once at 2026-11-29 18:00 (UTC)", ["2026-11-29T18:00:00+00:00"])),
        ("every Monday and Friday at noon summarise the week",
         ("ask", "summarise the week", "every Monday and Friday at 12:00 (UTC)",
          ["2026-11-30T12:00:00+00:00", "2026-12-04T12:00:00+00:00", "2026-12-07T12:00:00+00:00"])),
    ],
)
def test_common_forms(text: str, expected: tuple) -> None:
    assert runs(text) == expected


def test_time_zone_from_the_user_overrides_the_default() -> None:
    kind, task, description, times = runs("every day at 7:30 in Europe/Berlin give me a briefing", tz="UTC", n=2)
    assert (kind, task, description) == ("ask", "give me a briefing", "every day at 07:30 (Europe/Berlin)")
    assert times == ["2026-11-30T07:30:00+01:00", "2026-12-01T07:30:00+01:00"]


def test_time_zone_from_config_is_the_default() -> None:
    _, _, description, times = runs("every day at 7:30 stretch", tz="America/New_York", n=1)
    assert description == "every day at 07:30 (America/New_York)"
    assert times == ["2026-11-30T07:30:00-05:00"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("stretch a lot", "no schedule found"),
        ("every day at 25:00 stretch", "not a time of day"),
        ("every day at 13pm stretch", "with am/pm the hour is 1 to 12"),
        ("remind me every weekday at 8:00", "say what to do"),
        ("every day at 8 in Mars/Olympus stretch", "unknown time zone"),
        ("on 2020-01-01 at 10:00 remind me to vote", "in the past"),
        ("cron 99 8 * * * ping", "bad cron expression"),
    ],
)
def test_what_is_not_understood_is_said_plainly(text: str, problem: str) -> None:
    with pytest.raises(ScheduleError, match=problem):
        parse_request(text, "UTC", NOW)


def test_same_words_same_job() -> None:
    a = parse_request("remind me every weekday at 8:00 to stretch", "UTC", NOW)
    b = parse_request("remind me every weekday at 8:00 to stretch", "UTC", NOW)
    assert (a.kind, a.task, a.when.description) == (b.kind, b.task, b.when.description)
    assert next_runs(a.when, 5, NOW) == next_runs(b.when, 5, NOW)


@pytest.mark.parametrize(
    ("text", "is_job"),
    [
        ("remind me every weekday at 8:00 to stretch", True),
        ("every Monday at 9 summarise my notes", True),
        ("in 20 minutes tell me to check the oven", True),
        ("at 18:00 tell me dinner is ready", True),
        ("Please remind me to call mum tomorrow", True),
        ("every time I open the app it crashes at 5 pm", False),
        ("Why does it crash at 5 pm?", False),
        ("What happens in 20 minutes?", False),
        ("tomorrow is my birthday", False),
        ("remind me at 25 o'clock to call mum", True),
        ("Remind me what my cat is called", True),
        ("erinnere mich morgen um 9 an den Arzt", True),
        ("jeden Montag um 8 Uhr die Nachrichten", True),
        ("at 5pm is the deadline ok?", False),
    ],
)
def test_which_chat_messages_ask_for_a_job(text: str, is_job: bool) -> None:
    assert is_job_request(text) is is_job


PHRASINGS = [json.loads(line) for line in (Path(schedule.__file__).parent / "data" / "schedule_phrasings.jsonl").read_text().splitlines()]


def test_the_shipped_phrasings_cover_what_people_say() -> None:
    assert len(PHRASINGS) >= 100
    assert sum("refuse" in p for p in PHRASINGS) >= 15
    words = " ".join(p["text"].lower() for p in PHRASINGS)
    for form in ("tomorrow", "every other", "in europe/berlin", "pst", "erinnere", "rappelle-moi", "recuérdame", "seconds"):
        assert form in words, form


@pytest.mark.parametrize("case", PHRASINGS, ids=[p["text"] for p in PHRASINGS])
def test_each_shipped_phrasing_parses_or_is_refused(case: dict) -> None:
    """Sunday 2026-11-29 16:30 UTC; every expectation was written by hand."""
    tz = case.get("tz", "UTC")
    if "refuse" in case:
        with pytest.raises(ScheduleError, match=re.escape(case["refuse"])) as refused:
            parse_request(case["text"], tz, NOW)
        assert refused.value.found is (case["refuse"] != "no schedule found")
        return
    r = parse_request(case["text"], tz, NOW)
    assert (r.kind, r.task, r.when.description) == (case["kind"], case["task"], case["when"])
    assert next_runs(r.when, 1, NOW)[0].isoformat() == case["first"]


def test_a_reminder_under_a_minute_keeps_its_seconds() -> None:
    r = parse_request("remind me in 30 seconds to take my vitamins", "UTC", NOW)
    assert r.when.precise and r.when.description == "once at 2026-11-29 16:30:30 (UTC)"
    assert not parse_request("remind me in 20 minutes to stretch", "UTC", NOW).when.precise


@pytest.mark.parametrize(
    ("text", "said_back"),
    [("take my vitamins", "take your vitamins"), ("tell me that I am late", "tell you that you are late"),
     ("My keys are in our car", "Your keys are in your car"), ("I'm out of milk, buy mine", "You're out of milk, buy yours")],
)
def test_pronouns_are_said_back_to_the_user(text: str, said_back: str) -> None:
    assert second_person(text) == said_back
