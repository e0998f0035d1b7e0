"""Plain-language schedules, parsed by rules rather than by a model, so that the same
words always give the same job and a misunderstanding shows up before it runs.

Understood forms (a time zone may follow as "in Europe/Berlin", else the user's or
the box's zone is used):

- "every weekday at 8:00", "every Monday and Friday at 9", "every day at 7pm",
  "every weekend at 10", "daily at noon"
- "every 20 minutes", "every 2 hours", "every day" (from now on, that often)
- "in 20 minutes", "in an hour", "in 3 days"
- "at 18:30", "tomorrow at 9am", "on 2026-12-24 at 10:00", "on 2026-12-24"
- cron: "cron 0 8 * * 1-5" (minute hour day month weekday)

The words around the schedule are the task. "remind me ... to X" and "tell me to X"
make a reminder (the box says X back); anything else is a request the agent answers
when the job runs ("every Monday at 9 summarise my notes").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

JobKind = Literal["remind", "ask"]


class ScheduleError(ValueError):
    """The words hold no schedule the parser understands; the message says what it expects."""


HELP = (
    'say when, e.g. "every weekday at 8:00", "every Monday at 9", "in 20 minutes", '
    '"tomorrow at 9am", "every 2 hours" or "cron 0 8 * * 1-5"'
)

DAYS = {
    "monday": "mon", "mon": "mon", "tuesday": "tue", "tue": "tue", "tues": "tue", "wednesday": "wed", "wed": "wed",
    "thursday": "thu", "thu": "thu", "thurs": "thu", "friday": "fri", "fri": "fri", "saturday": "sat", "sat": "sat",
    "sunday": "sun", "sun": "sun",
}
DAY_GROUPS = {"weekday": "mon-fri", "weekdays": "mon-fri", "weekend": "sat,sun", "weekends": "sat,sun",
              "day": "*", "morning": "*", "evening": "*", "night": "*"}
UNITS = {"second": "seconds", "minute": "minutes", "min": "minutes", "hour": "hours", "day": "days", "week": "weeks"}
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "ten": 10, "fifteen": 15,
           "twenty": 20, "thirty": 30, "half an": 0}

TIME = r"(?P<time>noon|midnight|\d{1,2}(?::\d{2})?\s*(?:am|pm)?)"
DAY_WORD = "|".join(sorted(list(DAYS) + list(DAY_GROUPS), key=len, reverse=True))
DAY_LIST = rf"(?P<days>(?:{DAY_WORD})s?(?:\s*(?:,|and|&)\s*(?:{DAY_WORD})s?)*)"
COUNT = r"(?P<n>\d+|an?|one|two|three|four|five|ten|fifteen|twenty|thirty|half an)"
UNIT = r"(?P<unit>seconds?|minutes?|mins?|hours?|days?|weeks?)"

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("cron", re.compile(r"\bcron\s+(?P<cron>(?:[\d*/,\-]+\s+){4}[\d*/,\-a-z]+)")),
    ("weekly", re.compile(rf"\b(?:every|each|on)\s+{DAY_LIST}\s+at\s+{TIME}")),
    ("weekly", re.compile(rf"\b(?P<days>daily)\s+at\s+{TIME}")),
    ("interval", re.compile(rf"\bevery\s+(?:{COUNT}\s+)?{UNIT}")),
    ("in", re.compile(rf"\bin\s+{COUNT}\s+{UNIT}")),
    ("date", re.compile(rf"\bon\s+(?P<date>\d{{4}}-\d{{2}}-\d{{2}})(?:\s+at\s+{TIME})?")),
    ("at", re.compile(rf"\b(?P<day>today|tomorrow)?\s*at\s+{TIME}(?!\S)")),
    ("day", re.compile(r"\b(?P<day>tomorrow)\b")),
]
ZONE = re.compile(r"\b(?:in|tz|timezone)[\s=:]+(?P<zone>UTC|[A-Z][A-Za-z_]+/[A-Za-z_]+(?:/[A-Za-z_]+)?)\b")
REMIND = re.compile(r"^\s*(?:please\s+)?(?:remind|tell)\s+me\s*(?:to|that|about)?\s*", re.I)
FILLER = re.compile(r"^(?:\s|,|to\b|and\b|then\b|:)+|(?:\s|,|\.|and\b|:)+$", re.I)


@dataclass(frozen=True)
class When:
    trigger: BaseTrigger
    description: str
    timezone: str
    one_off: bool


@dataclass(frozen=True)
class JobRequest:
    when: When
    kind: JobKind
    task: str


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}; use a name like Europe/Berlin or UTC") from None


def parse_request(text: str, tz: str, now: datetime | None = None) -> JobRequest:
    """Splits "remind me every weekday at 8:00 to stretch" into when, kind and task."""
    words = text.strip()
    zone_match = ZONE.search(words)
    if zone_match:
        tz = zone_match.group("zone")
        words = (words[: zone_match.start()] + words[zone_match.end():]).strip()
    when, span = _find_when(words, tz, now)
    rest = FILLER.sub("", (words[: span[0]] + " " + words[span[1]:]).strip())
    kind: JobKind = "ask"
    reminder = REMIND.match(rest)
    if reminder:
        kind, rest = "remind", rest[reminder.end():]
    task = FILLER.sub("", rest).strip()
    if not task:
        raise ScheduleError(f"say what to do as well as when, e.g. \"{when.description}, remind me to stretch\"")
    return JobRequest(when, kind, task)


def is_job_request(text: str) -> bool:
    """Whether a plain chat message asks for a job: it starts with "remind me"/"tell me"
    or with a schedule ("every Monday at 9 ...", "in 20 minutes ..."). A time in the
    middle of an ordinary question ("why does it crash at 5 pm?") does not count."""
    stripped = text.strip()
    if REMIND.match(stripped):
        return True
    lowered = stripped.lower()
    return any(pattern.match(lowered) for form, pattern in PATTERNS if form != "day")


def parse_when(text: str, tz: str, now: datetime | None = None) -> When:
    """Just the schedule (agent files' `schedules.when`)."""
    words = text.strip()
    zone_match = ZONE.search(words)
    if zone_match:
        tz = zone_match.group("zone")
        words = (words[: zone_match.start()] + words[zone_match.end():]).strip()
    return _find_when(words, tz, now)[0]


def next_runs(when: When, count: int = 3, now: datetime | None = None) -> list[datetime]:
    tzinfo = zone(when.timezone)
    now = now or datetime.now(tzinfo)
    runs: list[datetime] = []
    previous = None
    while len(runs) < count:
        nxt = when.trigger.get_next_fire_time(previous, now if previous is None else previous)
        if nxt is None:
            break
        runs.append(nxt)
        previous = nxt
    return runs


def _find_when(words: str, tz: str, now: datetime | None) -> tuple[When, tuple[int, int]]:
    tzinfo = zone(tz)
    now = (now or datetime.now(tzinfo)).astimezone(tzinfo)
    lowered = words.lower()
    for form, pattern in PATTERNS:
        m = pattern.search(lowered)
        if m is None:
            continue
        return _build(form, m, tz, tzinfo, now), m.span()
    raise ScheduleError(f"no schedule found in {words!r}: {HELP}")


def _build(form: str, m: re.Match[str], tz: str, tzinfo: ZoneInfo, now: datetime) -> When:
    if form == "cron":
        expr = m.group("cron")
        minute, hour, day, month, weekday = expr.split()
        try:
            trigger = CronTrigger(minute=minute, hour=hour, day=day, month=month,
                                  day_of_week=_cron_weekdays(weekday), timezone=tzinfo)
        except ValueError as e:
            raise ScheduleError(f"bad cron expression {expr!r}: {e}") from None
        return When(trigger, f"cron {expr} ({tz})", tz, False)
    if form == "weekly":
        hour, minute = _time(m.group("time"))
        days = _days(m.group("days"))
        trigger = CronTrigger(day_of_week=days, hour=hour, minute=minute, timezone=tzinfo)
        return When(trigger, f"every {_days_text(days)} at {hour:02d}:{minute:02d} ({tz})", tz, False)
    if form == "interval":
        n, unit = _count(m.group("n")), UNITS[m.group("unit").rstrip("s")]
        trigger = IntervalTrigger(**{unit: n}, start_date=now + timedelta(**{unit: n}), timezone=tzinfo)
        return When(trigger, f"every {n} {unit} ({tz})" if n != 1 else f"every {unit[:-1]} ({tz})", tz, False)
    if form == "in":
        n, unit = _count(m.group("n")), UNITS[m.group("unit").rstrip("s")]
        delta = timedelta(minutes=30) if m.group("n") == "half an" else timedelta(**{unit: n})
        run = now + delta
        return When(DateTrigger(run_date=run, timezone=tzinfo), f"once at {run:%Y-%m-%d %H:%M} ({tz})", tz, True)
    if form == "date":
        day = datetime.strptime(m.group("date"), "%Y-%m-%d").date()
        hour, minute = _time(m.group("time")) if m.group("time") else (9, 0)
        run = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tzinfo)
        if run <= now:
            raise ScheduleError(f"{run:%Y-%m-%d %H:%M} {tz} is in the past")
        return When(DateTrigger(run_date=run, timezone=tzinfo), f"once at {run:%Y-%m-%d %H:%M} ({tz})", tz, True)
    hour, minute = _time(m.group("time")) if m.groupdict().get("time") else (9, 0)  # "at" and "day"
    run = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if m.group("day") == "tomorrow":
        run += timedelta(days=1)
    elif run <= now:
        if m.group("day") == "today":
            raise ScheduleError(f"{hour:02d}:{minute:02d} today has passed")
        run += timedelta(days=1)
    return When(DateTrigger(run_date=run, timezone=tzinfo), f"once at {run:%Y-%m-%d %H:%M} ({tz})", tz, True)


def _time(text: str) -> tuple[int, int]:
    text = text.strip()
    if text == "noon":
        return 12, 0
    if text == "midnight":
        return 0, 0
    m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?\s*(am|pm)?", text)
    assert m is not None
    hour, minute, half = int(m.group(1)), int(m.group(2) or 0), m.group(3)
    if half:
        if not 1 <= hour <= 12:
            raise ScheduleError(f"{text!r} is not a time: with am/pm the hour is 1 to 12")
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59:
        raise ScheduleError(f"{text!r} is not a time of day")
    return hour, minute


def _days(text: str) -> str:
    found: list[str] = []
    for word in re.findall(r"[a-z]+", text):
        if word in ("and",):
            continue
        word = word if word in DAYS or word in DAY_GROUPS or word == "daily" else word.rstrip("s")
        value = "*" if word == "daily" else DAY_GROUPS.get(word) or DAYS.get(word)
        if value is None:
            continue
        if value == "*":
            return "*"
        found.append(value)
    return ",".join(dict.fromkeys(found))


def _days_text(days: str) -> str:
    names = {"*": "day", "mon-fri": "weekday", "sat,sun": "weekend day"}
    if days in names:
        return names[days]
    full = {v: k.capitalize() for k, v in DAYS.items() if len(k) > 4 or k in ("friday",)}
    return " and ".join(full.get(d, d) for d in days.split(","))


def _cron_weekdays(field: str) -> str:
    """Cron counts weekdays from Sunday = 0 (or 7); APScheduler from Monday = 0: use names."""
    names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    return re.sub(r"\d+", lambda d: names[int(d.group())] if int(d.group()) <= 7 else d.group(), field)


def _count(text: str | None) -> int:
    if text is None:
        return 1
    return int(text) if text.isdigit() else max(1, NUMBERS[text])
