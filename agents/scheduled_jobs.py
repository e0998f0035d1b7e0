"""Scheduled jobs: APScheduler 3 on the box's own database, so jobs survive restarts.

APScheduler keeps each job's trigger and next run time in its SQLAlchemy job store
(table `apscheduler_jobs`, same database as everything else); `agent_jobs` keeps what
the job is for (chat, agent, task) and `agent_job_runs` what happened each time.

- A reminder says its text back; any other job runs an agent turn and delivers the answer.
- Runs missed while the box was off are coalesced into one run; every run made up
  late (a one-off reminder, a single missed run, many) says when it was due, and how
  many runs it stands for.
- A job that fails twice in a row alerts the owner.

APScheduler stores a job's function as an importable reference, so every job calls
`run_job(service, job_id)`, which finds the live `ScheduledJobs` instance for that database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import select

from agents.pronouns import second_person
from agents.registry import AgentEntry
from agents.schedule import JobRequest, next_runs, parse_request, parse_when
from agents.tables import JobInfo, JobRun
from aibox.secrets import redact
from aibox.store import Store
from aibox.store.schema import utcnow

log = logging.getLogger(__name__)

Deliver = Callable[[str, str, str], Awaitable[None]]  # platform, chat_id, text
Ask = Callable[[JobInfo], Awaitable[str]]  # the agent's answer to a job's task
Alert = Callable[[str, str], Awaitable[None]]  # platform, text for the owner

ALERT_AFTER_FAILURES = 2
AGENT_JOB_ID = re.compile(r"^[a-z][a-z0-9_-]*-\d+$")  # "briefing-0"; jobs made in chat are "j" + hex
MAX_MISSED_COUNT = 100_000
# A run this much after its time was made up, not merely started a little late.
LATE_AFTER = timedelta(minutes=1)
_LIVE: dict[str, "ScheduledJobs"] = {}


async def run_job(service: str, job_id: str) -> None:
    jobs = _LIVE.get(service)
    if jobs is None:
        log.error("job %s fired but its scheduler is not running", job_id)
        return
    await jobs.run(job_id)


@dataclass(frozen=True)
class Created:
    id: str
    description: str
    next_runs: list[datetime]
    confirmation: str


class ScheduledJobs:
    def __init__(self, store: Store, deliver: Deliver, ask: Ask, alert: Alert, default_tz: str = "UTC") -> None:
        self.store = store
        self.deliver = deliver
        self.ask = ask
        self.alert = alert
        self.default_tz = default_tz
        self.service = hashlib.sha256(store.url.encode()).hexdigest()[:16]
        self.scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=store.engine, tablename="apscheduler_jobs")},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=timezone.utc,
        )
        self._running: set[asyncio.Task] = set()
        self._due: dict[str, datetime] = {}  # job id -> the scheduled time of the run just submitted
        self.scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED)

    def _submitted(self, event: JobSubmissionEvent) -> None:
        """APScheduler knows when each run was due (a one-off job is gone from the store by
        the time it runs); keep it for the late-run note."""
        if event.scheduled_run_times:
            self._due[event.job_id] = event.scheduled_run_times[-1]

    def start(self, paused: bool = False) -> None:
        _LIVE[self.service] = self
        self.scheduler.start(paused=paused)
        self._recover()

    def _recover(self) -> None:
        """After a crash: runs cut short are marked so, and a job that fired but never
        finished (APScheduler drops a one-off job as it fires) runs again now."""
        now = utcnow()
        with self.store.session() as s:
            cut: set[str] = set()
            for run in s.scalars(select(JobRun).where(JobRun.status == "running")):
                run.status, run.detail, run.finished_at = "interrupted", "the box stopped during this run", now
                cut.add(run.job_id)
            for info in s.scalars(select(JobInfo).where(JobInfo.active.is_(True))):
                if self.scheduler.get_job(info.id) is not None:
                    continue
                ran = s.scalars(select(JobRun.id).where(JobRun.job_id == info.id)).first() is not None
                if info.id in cut or not ran:
                    log.info("job %s was cut short by a stop; running it again", info.id)
                    self.scheduler.add_job(run_job, "date", run_date=now, args=(self.service, info.id), id=info.id,
                                           name=info.task[:100], replace_existing=True)
                else:
                    info.active = False

    async def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._running:
            await asyncio.wait(self._running, timeout=10)
        if _LIVE.get(self.service) is self:
            del _LIVE[self.service]

    # -- creating and listing ---------------------------------------------------------

    async def create_from_text(
        self, text: str, platform: str, chat_id: str, sender_id: str | None, agent: str, tz: str | None = None
    ) -> Created:
        request = parse_request(text, tz or self.default_tz)
        return self.create(request, platform, chat_id, sender_id, agent)

    def create(
        self, request: JobRequest, platform: str, chat_id: str, sender_id: str | None, agent: str,
        job_id: str | None = None, next_run_time: datetime | None = None, created_at: datetime | None = None,
    ) -> Created:
        job_id = job_id or "j" + secrets.token_hex(3)
        with self.store.session() as s:
            s.merge(JobInfo(
                id=job_id, platform=platform, chat_id=chat_id, sender_id=sender_id, agent=agent, kind=request.kind,
                task=request.task, schedule=request.when.description, timezone=request.when.timezone,
                created_at=created_at or utcnow(), failures=0, last_run_at=None, active=True,
            ))
        extra = {"next_run_time": next_run_time} if next_run_time is not None else {}
        self.scheduler.add_job(run_job, request.when.trigger, args=(self.service, job_id), id=job_id,
                               name=request.task[:100], replace_existing=True, **extra)
        runs = [next_run_time] if next_run_time is not None else next_runs(request.when, 3)
        # a reminder is said back to the user ("take your vitamins"); a request is quoted as the agent gets it
        what = f"remind you to {second_person(request.task)}" if request.kind == "remind" else f"ask {agent}: {request.task}"
        shown = "%a %Y-%m-%d %H:%M:%S %Z" if request.when.precise else "%a %Y-%m-%d %H:%M %Z"
        when = ", ".join(f"{r:{shown}}" for r in runs)
        confirmation = f"Job {job_id}: I'll {what}, {request.when.description}. Next: {when}. Cancel with /cancel {job_id}."
        return Created(job_id, request.when.description, runs, confirmation)

    def schedule_agent(self, agent: str, index: int, when_text: str, task: str, platform: str, chat_id: str) -> str:
        """An agent file's own schedule (the daily briefing), under the same id on every
        start. An unchanged schedule keeps its job, so runs it missed while the box was
        off are still made up; a changed one is replaced."""
        job_id = f"{agent}-{index}"
        when = parse_when(when_text, self.default_tz)
        with self.store.session() as s:
            info = s.get(JobInfo, job_id)
            same = info is not None and info.active and (info.schedule, info.task, info.platform, info.chat_id) == (
                when.description, task, platform, chat_id)
        if not (same and self.scheduler.get_job(job_id) is not None):
            self.create(JobRequest(when, "ask", task), platform, chat_id, None, agent, job_id=job_id)
        return job_id

    def sync_agents(self, entries: Iterable[AgentEntry], chat_for: Callable[[str, str], str | None]) -> None:
        """Schedules from agent files: kept for enabled agents whose chat is reachable.
        `chat_for(platform, chat)` resolves a schedule's chat ("owner" included) to a chat
        id on a configured platform, or None when it is not reachable."""
        wanted: set[str] = set()
        for entry in entries:
            if not entry.enabled:
                continue
            for i, schedule in enumerate(entry.definition.schedules):
                platform, _, chat = schedule.chat.partition(":")
                chat_id = chat_for(platform, chat)
                if not chat_id:
                    log.info("schedule %d of agent %s not active: %s is not configured", i, entry.definition.name, schedule.chat)
                    continue
                wanted.add(self.schedule_agent(entry.definition.name, i, schedule.when, schedule.task, platform, chat_id))
        self.keep_agent_jobs(wanted)

    def keep_agent_jobs(self, wanted: set[str]) -> None:
        """Cancels agent-file schedules no longer wanted (agent disabled, removed or edited)."""
        with self.store.session() as s:
            ids = s.scalars(select(JobInfo.id).where(JobInfo.active.is_(True), JobInfo.sender_id.is_(None))).all()
        for job_id in ids:
            if AGENT_JOB_ID.match(job_id) and job_id not in wanted:
                self.cancel(job_id)

    def list(self, platform: str | None = None, chat_id: str | None = None) -> list[dict]:
        with self.store.session() as s:
            query = select(JobInfo).where(JobInfo.active.is_(True)).order_by(JobInfo.created_at)
            if platform is not None:
                query = query.where(JobInfo.platform == platform, JobInfo.chat_id == chat_id)
            infos = list(s.scalars(query))
        rows = []
        for info in infos:
            job = self.scheduler.get_job(info.id)
            rows.append({
                "id": info.id, "platform": info.platform, "chat_id": info.chat_id, "agent": info.agent,
                "kind": info.kind, "task": info.task, "schedule": info.schedule,
                "next_run": job.next_run_time.isoformat() if job and job.next_run_time else None,
                "failures": info.failures,
                "last_run": info.last_run_at.isoformat() if info.last_run_at else None,
            })
        return rows

    def cancel(self, job_id: str, platform: str | None = None, chat_id: str | None = None) -> bool:
        """Cancels a job; with a chat given, only that chat's jobs."""
        with self.store.session() as s:
            info = s.get(JobInfo, job_id)
            if info is None or not info.active or (platform is not None and (info.platform, info.chat_id) != (platform, chat_id)):
                return False
            info.active = False
        try:
            self.scheduler.remove_job(job_id)
        except JobLookupError:
            pass
        return True

    def history(self, job_id: str, limit: int = 20) -> list[dict]:
        with self.store.session() as s:
            rows = s.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id.desc()).limit(limit))
            return [{"started_at": r.started_at.isoformat(), "status": r.status, "missed": r.missed, "detail": r.detail} for r in rows]

    # -- running ---------------------------------------------------------------------

    async def run(self, job_id: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._run(job_id)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _run(self, job_id: str) -> None:
        now = utcnow()
        with self.store.session() as s:
            info = s.get(JobInfo, job_id)
            if info is None or not info.active:
                return
            since = _aware(info.last_run_at or info.created_at)
            job = self.scheduler.get_job(job_id)
            missed = _missed(job.trigger, since, now) if job is not None else 0
            due = self._due.pop(job_id, None)
            run = JobRun(job_id=job_id, status="running", missed=missed, detail="")
            s.add(run)
            s.flush()
            run_id = run.id
            s.expunge(info)
        try:
            text = f"⏰ Reminder: {second_person(info.task)}" if info.kind == "remind" else await self.ask(info)
            text += _late_note(due, missed, since, now, info.timezone)
            await self.deliver(info.platform, info.chat_id, text)
            status, detail = "ok", ""
        except Exception as e:  # a failed run is recorded and counted, never crashes the scheduler
            status, detail = "failed", redact(f"{type(e).__name__}: {e}")[:500]
            log.warning("job %s failed: %s", job_id, detail)
        with self.store.session() as s:
            row = s.get(JobRun, run_id)
            row.status, row.detail, row.finished_at = status, detail, utcnow()
            info = s.get(JobInfo, job_id)
            info.last_run_at = now
            info.failures = 0 if status == "ok" else info.failures + 1
            failures = info.failures
            if self.scheduler.get_job(job_id) is None:
                info.active = False
        if failures == ALERT_AFTER_FAILURES:
            await self._alert(info, detail)

    async def _alert(self, info: JobInfo, detail: str) -> None:
        text = (f"⚠️ Job {info.id} ({info.task[:80]}) failed {ALERT_AFTER_FAILURES} times in a row. "
                f"Last error: {detail}. Cancel it with /cancel {info.id} or check `aibox jobs list`.")
        try:
            await self.alert(info.platform, text)
        except Exception as e:  # no way to reach the owner: the log is the last resort
            log.error("could not alert the owner about job %s: %s", info.id, redact(str(e)))


def _late_note(due: datetime | None, missed: int, since: datetime, now: datetime, tz: str) -> str:
    """The note on a run made up after the box was off: when it was due, and how many
    scheduled runs it stands for when it stands for more than one."""
    if not missed and (due is None or now - due < LATE_AFTER):
        return ""
    note = "\n\n(Late: the box was off when this was due"
    if due is not None:
        try:
            local = due.astimezone(ZoneInfo(tz))
        except (ZoneInfoNotFoundError, ValueError):
            local = due
        note += f", at {local:%Y-%m-%d %H:%M %Z}"
    if missed:
        note += f"; this one run stands for {missed + 1} scheduled runs since {since:%Y-%m-%d %H:%M} UTC"
    return note + ".)"


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _missed(trigger: BaseTrigger, since: datetime, now: datetime) -> int:
    """How many scheduled times after `since` have come by `now`, less the one running."""
    count, previous = 0, None
    cursor = since + timedelta(microseconds=1)
    while count < MAX_MISSED_COUNT:
        nxt = trigger.get_next_fire_time(previous, cursor if previous is None else previous)
        if nxt is None or nxt > now:
            break
        count += 1
        previous = nxt
    return max(0, count - 1)
