"""Scheduled jobs on APScheduler with its SQLAlchemy job store in the box's database:
they survive a restart, runs missed while the box was off become one run with a note,
two failures in a row alert the owner, and every run is in the history.

Delivery and the agent's answer are deterministic stubs here (the words do not matter,
the schedule does); test_chat_jobs.py runs the same jobs in a real daemon through the
Telegram connector."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agents.scheduled_jobs import ScheduledJobs
from agents.schedule import JobRequest, When
from aibox.store import Store
from connectors.errors import ConnectorError


class Box:
    """What the jobs deliver to: recorded, and failing when told to."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, str]] = []
        self.alerts: list[tuple[str, str]] = []
        self.fail = False

    async def deliver(self, platform: str, chat_id: str, text: str) -> None:
        if self.fail:
            raise ConnectorError("Telegram said 403: bot was blocked")
        self.delivered.append((platform, chat_id, text))

    async def ask(self, job) -> str:  # noqa: ANN001 - agents.tables.JobInfo
        return f"answer to {job.task}"

    async def alert(self, platform: str, text: str) -> None:
        self.alerts.append((platform, text))


def jobs_on(url: str, box: Box) -> ScheduledJobs:
    return ScheduledJobs(Store.open(url), box.deliver, box.ask, box.alert, "Europe/Berlin")


async def off_then_on(url: str, make) -> tuple[ScheduledJobs, Box]:  # noqa: ANN001 - make(jobs) creates jobs
    """Jobs made on a box that is then off for a while (its scheduler paused and shut
    down), and the box switched on again."""
    off = jobs_on(url, Box())
    off.start(paused=True)
    make(off)
    await off.shutdown()
    off.store.close()
    box = Box()
    on = jobs_on(url, box)
    on.start()
    return on, box


async def until(condition, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_jobs_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    first = jobs_on(url, Box())
    first.start()
    weekly = await first.create_from_text("every Monday at 9 summarise my notes", "telegram", "42", "42", "assistant")
    oven = await first.create_from_text("in 20 minutes tell me to check the oven", "telegram", "42", "42", "assistant")
    assert weekly.confirmation.startswith(f"Job {weekly.id}: I'll ask assistant: summarise my notes, every Monday at 09:00 (Europe/Berlin). Next: Mon ")
    assert "remind you to check the oven" in oven.confirmation
    before = {j["id"]: j["next_run"] for j in first.list()}
    await first.shutdown()
    first.store.close()

    second = jobs_on(url, Box())
    second.start()
    after = {j["id"]: j["next_run"] for j in second.list()}
    assert after == before and set(after) == {weekly.id, oven.id}
    assert datetime.fromisoformat(after[weekly.id]).weekday() == 0
    assert not second.cancel(oven.id, "telegram", "other-chat"), "a chat cancels only its own jobs"
    assert second.cancel(oven.id, "telegram", "42")
    await second.shutdown()
    second.store.close()

    third = jobs_on(url, Box())
    third.start()
    assert [j["id"] for j in third.list()] == [weekly.id]
    assert third.scheduler.get_job(oven.id) is None
    await third.shutdown()


async def test_runs_missed_while_off_are_coalesced_into_one_with_a_note(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    now = datetime.now(timezone.utc)
    # The box was switched off five hours ago, just after this hourly job was made:
    # five runs fell due while it was off.
    hourly = When(IntervalTrigger(hours=1, start_date=now - timedelta(hours=5), timezone=timezone.utc), "every hour (UTC)", "UTC", False)
    on, box = await off_then_on(url, lambda off: off.create(
        JobRequest(hourly, "remind", "drink water"), "telegram", "42", "42", "assistant", job_id="hourly",
        next_run_time=now - timedelta(hours=4), created_at=now - timedelta(hours=5)))
    await until(lambda: len(box.delivered) == 1)
    await asyncio.sleep(1.5)
    assert len(box.delivered) == 1, "missed runs must be coalesced into one"
    [(_, _, text)] = box.delivered
    assert text.startswith("⏰ Reminder: drink water")
    assert "this one run stands for 5 scheduled runs" in text
    [run] = on.history("hourly")
    assert (run["status"], run["missed"]) == ("ok", 4)
    [job] = on.list()
    assert datetime.fromisoformat(job["next_run"]) > now, "the next run is in the future, not another catch-up"
    await on.shutdown()


async def test_two_failures_in_a_row_alert_the_owner_once(tmp_path: Path) -> None:
    box = Box()
    jobs = jobs_on(f"sqlite:///{tmp_path / 'aibox.db'}", box)
    jobs.start()
    box.fail = True
    created = await jobs.create_from_text("every second remind me to blink", "telegram", "42", "42", "assistant")
    await until(lambda: len(jobs.history(created.id)) >= 3 and jobs.history(created.id)[0]["status"] != "running")
    assert len(box.alerts) == 1, box.alerts
    platform, text = box.alerts[0]
    assert platform == "telegram"
    assert f"Job {created.id} (blink) failed 2 times in a row" in text and "bot was blocked" in text
    assert {r["status"] for r in jobs.history(created.id)} == {"failed"}

    box.fail = False  # a success resets the count
    await until(lambda: jobs.list()[0]["failures"] == 0)
    assert jobs.history(created.id)[0]["status"] == "ok"
    assert box.delivered[0][2] == "⏰ Reminder: blink"
    jobs.cancel(created.id)
    await jobs.shutdown()


async def test_an_agent_job_delivers_the_agents_answer(tmp_path: Path) -> None:
    box = Box()
    jobs = jobs_on(f"sqlite:///{tmp_path / 'aibox.db'}", box)
    jobs.start()
    created = await jobs.create_from_text("every second summarise my notes", "telegram", "42", "42", "assistant")
    await until(lambda: len(box.delivered) >= 1)
    jobs.cancel(created.id)
    assert box.delivered[0] == ("telegram", "42", "answer to summarise my notes")
    await jobs.shutdown()


async def test_agent_file_schedules_are_kept_across_restarts_and_replaced_when_edited(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    first = jobs_on(url, Box())
    first.start()
    mine = await first.create_from_text("every Monday at 9 summarise my notes", "telegram", "42", "42", "assistant")
    assert first.schedule_agent("briefing", 0, "every day at 7:00", "Write the briefing.", "telegram", "42") == "briefing-0"
    before = {j["id"]: j for j in first.list()}
    await first.shutdown()
    first.store.close()

    second = jobs_on(url, Box())
    second.start(paused=True)
    second.schedule_agent("briefing", 0, "every day at 7:00", "Write the briefing.", "telegram", "42")
    assert {j["id"]: j for j in second.list()} == before, "an unchanged schedule keeps its job and next run"
    second.schedule_agent("briefing", 0, "every day at 6:30", "Write the briefing.", "telegram", "42")
    [briefing] = [j for j in second.list() if j["id"] == "briefing-0"]
    assert briefing["schedule"] == "every day at 06:30 (Europe/Berlin)" and "T06:30:00" in briefing["next_run"]
    second.keep_agent_jobs(set())  # the briefing agent was disabled
    assert [j["id"] for j in second.list()] == [mine.id], "jobs made in chat are not agent schedules"
    await second.shutdown()


async def test_a_reminder_cut_short_by_a_crash_runs_after_the_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    first = jobs_on(url, Box())
    first.start(paused=True)
    created = await first.create_from_text("in 20 minutes tell me to check the oven", "telegram", "42", "42", "assistant")
    # The reminder fired (APScheduler removed the one-off job from its table) and the box
    # died before it was delivered: no run finished.
    first.scheduler.remove_job(created.id)
    await first.shutdown()
    first.store.close()

    box = Box()
    second = jobs_on(url, box)
    second.start()
    await until(lambda: box.delivered)
    assert box.delivered == [("telegram", "42", "⏰ Reminder: check the oven")]
    await until(lambda: second.history(created.id)[0]["status"] == "ok")
    assert second.list() == [], "a one-off job is done once it ran"
    await second.shutdown()
    second.store.close()

    third = jobs_on(url, Box())
    third.start()
    await asyncio.sleep(0.5)
    assert len(third.history(created.id)) == 1, "and it does not run again on the next start"
    await third.shutdown()


async def test_every_run_made_up_after_the_box_was_off_says_it_is_late(tmp_path: Path) -> None:
    """A one-off reminder due while the box was off, and a recurring job that missed
    just one run, both say when they were due (not only runs standing for several)."""
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    now = datetime.now(timezone.utc)
    once = When(DateTrigger(run_date=now - timedelta(hours=1), timezone=timezone.utc), "once", "UTC", True)
    hourly = When(IntervalTrigger(hours=1, start_date=now - timedelta(minutes=90), timezone=timezone.utc), "every hour (UTC)", "UTC", False)

    def make(off: ScheduledJobs) -> None:
        off.create(JobRequest(once, "remind", "take my vitamins"), "telegram", "42", "42", "assistant", job_id="once",
                   created_at=now - timedelta(hours=2))
        off.create(JobRequest(hourly, "remind", "stretch"), "telegram", "42", "42", "assistant", job_id="hourly",
                   next_run_time=now - timedelta(minutes=30), created_at=now - timedelta(minutes=90))

    on, box = await off_then_on(url, make)
    await until(lambda: len(box.delivered) == 2)
    texts = sorted(text for _, _, text in box.delivered)
    due_once = (now - timedelta(hours=1)).astimezone(ZoneInfo("UTC"))
    assert texts[0].startswith("⏰ Reminder: stretch\n\n(Late: the box was off when this was due, at ")
    assert "stands for" not in texts[0], "one missed run is one run"
    assert texts[1] == f"⏰ Reminder: take your vitamins\n\n(Late: the box was off when this was due, at {due_once:%Y-%m-%d %H:%M} UTC.)"
    await on.shutdown()


async def test_a_run_on_time_has_no_note_and_confirmations_speak_to_the_user(tmp_path: Path) -> None:
    jobs, box = await off_then_on(f"sqlite:///{tmp_path / 'aibox.db'}", lambda _off: None)
    created = await jobs.create_from_text("in 2 seconds remind me to take my vitamins", "telegram", "42", "42", "assistant")
    assert "I'll remind you to take your vitamins, once at " in created.confirmation
    assert re.search(r"Next: \w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CET", created.confirmation), "seconds for a reminder under a minute"
    await until(lambda: len(box.delivered) == 1)
    assert box.delivered == [("telegram", "42", "⏰ Reminder: take your vitamins")]
    await jobs.shutdown()
