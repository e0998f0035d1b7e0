"""Plain-language schedules, parsed by rules rather than by a model, so that the same
words always give the same job and a misunderstanding shows up before it runs. This
is the one parser for chat phrases, `/remind`, the reminders tool and agent files.

Understood forms (a time zone may follow: "in Europe/Berlin", "PST", "UTC+2"; else
the user's or the box's zone is used):

- "every weekday at 8:00", "every Monday and Friday at 9", "at 7pm every day",
  "every weekend at 10", "daily at noon", "every Monday" (at 09:00)
- "every other Tuesday at 18:00", "every 20 minutes", "every 2 hours", "every other day"
- "in 20 minutes", "in an hour", "in half an hour", "in 30 seconds", "in 3 days",
  "10 minutes from now"
- "at 18:30", "at 9 o'clock", "at 7 in the evening", "tonight at 8", "tomorrow at 9am",
  "at 9 tomorrow", "the day after tomorrow at 10", "tomorrow" (at 09:00)
- "on Friday at 5pm", "next Monday at 9", "Friday at 17:00" (the next such day)
- "on 2026-12-24 at 10:00", "on 24 December at 10", "on December 24th", "on 24.12.2026"
- cron: "cron 0 8 * * 1-5" (minute hour day month weekday)
- German, French and Spanish for the same forms: "erinnere mich morgen um 9 Uhr an …",
  "jeden zweiten Dienstag um 18 Uhr", "rappelle-moi dans 10 minutes de …",
  "tous les jours à 7h30", "recuérdame mañana a las 9 …", "cada lunes a las 8".

A time that does not exist ("25 o'clock", "13pm", 02:30 on the night the clocks go
forward, "on 2026-02-30") is refused with the reason, never guessed at.

The words around the schedule are the task. "remind me ... to X" and "tell me to X"
(and their German, French and Spanish forms) make a reminder (the box says X back);
anything else is a request the agent answers when the job runs ("every Monday at 9
summarise my notes").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

JobKind = Literal["remind", "ask"]


class ScheduleError(ValueError):
    """The words hold no schedule the parser can use; the message says why. `found` is
    False when there was no schedule in the words at all (an ordinary message), True
    when there was one that cannot be kept (a time that does not exist, no task)."""

    def __init__(self, message: str, found: bool = True) -> None:
        super().__init__(message)
        self.found = found


HELP = (
    'say when, e.g. "every weekday at 8:00", "every Monday at 9", "in 20 minutes", '
    '"tomorrow at 9am", "every 2 hours" or "cron 0 8 * * 1-5"'
)

DAYS = {
    "monday": "mon", "mon": "mon", "tuesday": "tue", "tue": "tue", "tues": "tue", "wednesday": "wed", "wed": "wed",
    "thursday": "thu", "thu": "thu", "thurs": "thu", "friday": "fri", "fri": "fri", "saturday": "sat", "sat": "sat",
    "sunday": "sun", "sun": "sun",
}
WEEKDAY_INDEX = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
DAY_NAMES = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
             "sat": "Saturday", "sun": "Sunday"}
DAY_GROUPS = {"weekday": "mon-fri", "weekdays": "mon-fri", "weekend": "sat,sun", "weekends": "sat,sun",
              "day": "*", "morning": "*", "evening": "*", "night": "*"}
MONTHS = {m: i + 1 for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july",
                                          "august", "september", "october", "november", "december"))}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
MONTHS["sept"] = 9
UNITS = {"s": "seconds", "sec": "seconds", "second": "seconds", "m": "minutes", "min": "minutes",
         "minute": "minutes", "h": "hours", "hr": "hours", "hour": "hours", "d": "days", "day": "days",
         "w": "weeks", "week": "weeks"}
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "ten": 10,
           "fifteen": 15, "twenty": 20, "thirty": 30, "forty-five": 45}
PARTS = {"morning": 0, "afternoon": 12, "evening": 12, "night": 12, "tonight": 12}

TIME = (r"(?P<time>noon|midday|midnight|\d{1,2}(?:[:.]\d{2})?(?!\d)(?:\s*(?:am|pm))?(?:\s*o'?clock)?"
        r"(?:\s+(?:in\s+the\s+)?(?P<part>morning|afternoon|evening|night))?)")
WEEKDAY = "|".join(sorted(DAYS, key=len, reverse=True))
DAY_WORD = "|".join(sorted(list(DAYS) + list(DAY_GROUPS), key=len, reverse=True))
DAY_LIST = rf"(?P<days>(?:{DAY_WORD})s?(?:\s*(?:,|and|&)\s*(?:{DAY_WORD})s?)*)"
REAL_DAYS = "|".join(sorted(list(DAYS) + ["weekday", "weekend"], key=len, reverse=True))
REAL_DAY_LIST = rf"(?P<days>(?:{REAL_DAYS})s?(?:\s*(?:,|and|&)\s*(?:{REAL_DAYS})s?)*)"
COUNT = r"(?P<n>\d+|an?|one|two|three|four|five|six|ten|fifteen|twenty|thirty|forty-five)"
UNIT = r"(?P<unit>seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|[smhdw])\b"
DAYREF = r"(?P<day>today|tonight|tomorrow|(?:the\s+)?day\s+after\s+tomorrow)"
MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
DATE = (rf"(?:(?P<iso>\d{{4}}-\d{{1,2}}-\d{{1,2}})|(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<mon>{MONTH})\.?(?:\s+(?P<y>\d{{4}}))?"
        rf"|(?P<mon2>{MONTH})\.?\s+(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(?P<y2>\d{{4}}))?"
        rf"|(?P<d3>\d{{1,2}})\.(?P<m3>\d{{1,2}})\.(?P<y3>\d{{4}})?)")

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("cron", re.compile(r"\bcron\s+(?P<cron>(?:[\d*/,\-]+\s+){4}[\d*/,\-a-z]+)")),
    ("other", re.compile(rf"\bat\s+{TIME}\s+every\s+(?:other|second)\s+(?P<day>{WEEKDAY})s?")),
    ("other", re.compile(rf"\bevery\s+(?:other|second)\s+(?P<day>{WEEKDAY})s?(?:\s+at\s+{TIME})?")),
    ("weekly", re.compile(rf"\b(?:every|each)\s+{DAY_LIST}\s+at\s+{TIME}")),
    ("weekly", re.compile(rf"\bat\s+{TIME}\s+(?:every|each)\s+{DAY_LIST}")),
    ("weekly", re.compile(rf"\b(?P<days>daily)\s+at\s+{TIME}")),
    ("weekly", re.compile(rf"\bat\s+{TIME}\s+(?P<days>daily)")),
    ("weekly", re.compile(rf"\b(?:every|each)\s+{REAL_DAY_LIST}\b")),
    ("interval", re.compile(rf"\bevery\s+(?:(?P<other>other)\s+|{COUNT}\s*)?{UNIT}")),
    ("in", re.compile(r"\bin\s+(?P<half>half\s+an|a\s+half|half)\s+hour\b")),
    ("in", re.compile(rf"\bin\s+{COUNT}\s*{UNIT}")),
    ("in", re.compile(rf"\b{COUNT}\s*{UNIT}\s+from\s+now\b")),
    ("date", re.compile(rf"\bat\s+{TIME}\s+on\s+(?:the\s+)?{DATE}")),
    ("date", re.compile(rf"\bon\s+(?:the\s+)?{DATE}(?:\s+at\s+{TIME})?")),
    ("weekday", re.compile(rf"\bat\s+{TIME}\s+(?:on|next|this)\s+(?P<day>{WEEKDAY})\b")),
    ("weekday", re.compile(rf"\b(?:on|next|this)\s+(?P<day>{WEEKDAY})\b(?:\s+at\s+{TIME})?")),
    ("weekday", re.compile(rf"\b(?P<day>{WEEKDAY})\s+at\s+{TIME}")),
    ("at", re.compile(rf"\b(?:{DAYREF}\s+)?at\s+{TIME}(?:\s+(?P<day2>today|tonight|tomorrow))?(?![\w:])")),
    ("day", re.compile(rf"\b{DAYREF}(?:\s+(?P<part>morning|afternoon|evening|night))?\b")),
]
# The forms that may open a chat message that asks for a job ("tomorrow" alone does not:
# "tomorrow is my birthday").
LEADING = ("cron", "other", "weekly", "interval", "in", "date", "at")

ZONE = re.compile(r"\b(?:in|en|tz|timezone)[\s=:]+(?P<zone>UTC|[A-Z][A-Za-z_]+/[A-Za-z_]+(?:/[A-Za-z_]+)?)\b")
ABBREVIATION = re.compile(r"(?<![\w/])(?:in\s+)?(?P<abbr>UTC|GMT|CET|CEST|EST|EDT|CST|CDT|MST|MDT|PST|PDT|BST|JST|IST|AEST)"
                          r"(?P<offset>[+-]\d{1,2})?(?!\w)")
ABBREVIATIONS = {"UTC": "UTC", "GMT": "UTC", "CET": "Europe/Berlin", "CEST": "Europe/Berlin", "EST": "America/New_York",
                 "EDT": "America/New_York", "CST": "America/Chicago", "CDT": "America/Chicago", "MST": "America/Denver",
                 "MDT": "America/Denver", "PST": "America/Los_Angeles", "PDT": "America/Los_Angeles",
                 "BST": "Europe/London", "JST": "Asia/Tokyo", "IST": "Asia/Kolkata", "AEST": "Australia/Sydney"}

REMIND = re.compile(
    r"^\s*(?:please\s+|bitte\s+)?(?:"
    r"(?:remind|tell)\s+me(?:\s+(?:to|that|about))?"
    r"|(?:erinnere|erinner)\s+mich(?:\s+bitte)?(?:\s+(?:daran|an|dass|zu))?"
    r"|sag\s+mir(?:\s+(?:dass|bescheid))?"
    r"|rappelle[\s-]+moi(?:\s+(?:de|d'|que|qu'))?"
    r"|recu[eé]rdame(?:\s+(?:que|de))?"
    r")\b\s*", re.I)
FILLER = re.compile(r"^(?:\s|,|to\b|and\b|then\b|:|daran\b|dass\b|de\b|d'|que\b)+|(?:\s|,|\.|and\b|:)+$", re.I)

# Other languages: a word-for-word mapping onto the English forms above. A language is
# used only when one of its `marks` (words English never uses) is in the message, so an
# English task that happens to contain "um" or "de" is read as English.
LANGUAGES: dict[str, tuple[set[str], dict[str, str]]] = {
    "de": ({"erinnere", "erinner", "mich", "uhr", "morgen", "übermorgen", "heute", "minuten", "stunden",
            "stunde", "sekunden", "tagen", "wochen", "jeden", "jede", "jeder", "täglich", "werktags", "montag",
            "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag", "zweiten", "halben", "einer"},
           {"erinnere": "remind", "erinner": "remind", "mich": "me", "sag": "tell", "mir": "me", "um": "at",
            "uhr": "o'clock", "morgen": "tomorrow", "übermorgen": "day after tomorrow", "heute": "today",
            "minuten": "minutes", "minute": "minute", "stunden": "hours", "stunde": "hour", "sekunden": "seconds",
            "tag": "day", "tage": "days", "tagen": "days", "woche": "week", "wochen": "weeks", "jeden": "every",
            "jede": "every", "jeder": "every", "alle": "every", "täglich": "daily", "werktags": "every weekday",
            "am": "on", "nächsten": "next", "nächste": "next", "zweiten": "other", "einer": "a", "einen": "a",
            "eine": "a", "halben": "half", "mittags": "at noon", "mittag": "noon", "mitternacht": "midnight",
            "abends": "in the evening", "morgens": "in the morning", "nachmittags": "in the afternoon",
            "montag": "monday", "dienstag": "tuesday", "mittwoch": "wednesday", "donnerstag": "thursday",
            "freitag": "friday", "samstag": "saturday", "sonntag": "sunday", "montags": "monday",
            "dienstags": "tuesday", "mittwochs": "wednesday", "donnerstags": "thursday", "freitags": "friday",
            "samstags": "saturday", "sonntags": "sunday", "werktag": "weekday", "wochenende": "weekend"}),
    "fr": ({"rappelle-moi", "rappelle", "demain", "dans", "heures", "heure", "chaque", "tous", "toutes", "jours",
            "semaines", "secondes", "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche",
            "midi", "minuit", "aujourd'hui", "après-demain", "soir"},
           {"rappelle-moi": "remind me", "rappelle": "remind", "moi": "me", "demain": "tomorrow",
            "après-demain": "day after tomorrow", "aujourd'hui": "today", "à": "at", "a": "at", "dans": "in",
            "heures": "hours", "heure": "hour", "minutes": "minutes", "secondes": "seconds", "jours": "days",
            "jour": "day", "semaines": "weeks", "semaine": "week", "chaque": "every", "tous": "every",
            "toutes": "every", "les": "", "le": "on", "un": "a", "une": "a", "deux": "two", "midi": "noon",
            "minuit": "midnight", "ce": "", "soir": "tonight", "prochain": "", "lundi": "monday", "mardi": "tuesday",
            "mercredi": "wednesday", "jeudi": "thursday", "vendredi": "friday", "samedi": "saturday",
            "dimanche": "sunday", "lundis": "monday", "mardis": "tuesday", "mercredis": "wednesday",
            "jeudis": "thursday", "vendredis": "friday", "samedis": "saturday", "dimanches": "sunday",
            "demi-heure": "half hour"}),
    "es": ({"recuérdame", "recuerdame", "mañana", "manana", "hoy", "minutos", "horas", "hora", "segundos", "días",
            "semanas", "cada", "todos", "lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo",
            "mediodía", "medianoche"},
           {"recuérdame": "remind me", "recuerdame": "remind me", "mañana": "tomorrow", "manana": "tomorrow",
            "pasado": "day after", "hoy": "today", "a": "", "las": "at", "la": "at", "en": "in",
            "minutos": "minutes", "horas": "hours", "hora": "hour", "segundos": "seconds", "días": "days",
            "dias": "days", "día": "day", "dia": "day", "semanas": "weeks", "semana": "week", "cada": "every",
            "todos": "every", "los": "", "el": "on", "un": "a", "una": "a", "dos": "two", "media": "half",
            "mediodía": "noon", "medianoche": "midnight", "lunes": "monday", "martes": "tuesday",
            "miércoles": "wednesday", "miercoles": "wednesday", "jueves": "thursday", "viernes": "friday",
            "sábado": "saturday", "sabado": "saturday", "domingo": "sunday", "sábados": "saturday",
            "domingos": "sunday"}),
}
# The hour words that mean "o'clock" after "at N" ("à 9 heures", "a las 9 horas").
OCLOCK_WORDS = {"heures", "heure", "h", "horas", "hora"}
TOKEN = re.compile(r"[^\s,;!?]+|[,;]")


@dataclass(frozen=True)
class When:
    trigger: BaseTrigger
    description: str
    timezone: str
    one_off: bool
    precise: bool = False  # shown to the second (a reminder less than a minute away)


@dataclass(frozen=True)
class JobRequest:
    when: When
    kind: JobKind
    task: str


@dataclass(frozen=True)
class _Words:
    """The message mapped onto English schedule words, remembering where each word came
    from so that the task can be cut out of the user's own text."""

    original: str
    text: str
    spans: list[tuple[int, int, int, int]]  # normalised start, end; original start, end

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        inside = [(os, oe) for ns, ne, os, oe in self.spans if ns < end and ne > start]
        return (min(s for s, _ in inside), max(e for _, e in inside)) if inside else (0, 0)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}; use a name like Europe/Berlin or UTC") from None


def parse_request(text: str, tz: str, now: datetime | None = None) -> JobRequest:
    """Splits "remind me every weekday at 8:00 to stretch" into when, kind and task."""
    words, tz = _take_zone(text.strip().replace("’", "'"), tz)
    when, (start, end) = _find_when(words, tz, now)
    rest = FILLER.sub("", (words[:start] + " " + words[end:]).strip())
    rest = re.sub(r"\s+", " ", rest)
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
    (or the same in German, French or Spanish) or with a schedule ("every Monday at 9
    ...", "in 20 minutes ..."). A time in the middle of an ordinary question ("why does
    it crash at 5 pm?") does not count, nor does a question that opens with one."""
    stripped = text.strip().replace("’", "'")
    if REMIND.match(stripped):
        return True
    if stripped.endswith("?"):
        return False
    lowered = _normalise(stripped).text
    return any(pattern.match(lowered) for form, pattern in PATTERNS if form in LEADING)


def parse_when(text: str, tz: str, now: datetime | None = None) -> When:
    """Just the schedule (agent files' `schedules.when`)."""
    words, tz = _take_zone(text.strip(), tz)
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


def _take_zone(words: str, tz: str) -> tuple[str, str]:
    """A zone named in the words wins over the default (and leaves the words)."""
    m = ZONE.search(words)
    if m:
        zone(m.group("zone"))
        return (words[: m.start()] + words[m.end():]).strip(), m.group("zone")
    m = ABBREVIATION.search(words)
    if m:
        name = ABBREVIATIONS[m.group("abbr")]
        if m.group("offset"):
            hours = int(m.group("offset"))
            if not -12 <= hours <= 14:
                raise ScheduleError(f"UTC{m.group('offset')} is not a time zone: offsets run from -12 to +14")
            name = "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"  # the Etc zones count the other way
        return (words[: m.start()] + words[m.end():]).strip(), name
    return words, tz


def _normalise(words: str) -> _Words:
    tokens = list(TOKEN.finditer(words))
    lowered = [t.group().lower() for t in tokens]
    keys = [w.rstrip(".") if not re.fullmatch(r"[\d.]+", w) else w for w in lowered]
    mapping: dict[str, str] = {}
    for marks, table in LANGUAGES.values():
        if any(k in marks for k in keys):
            mapping = table
            break
    out: list[str] = []
    spans: list[tuple[int, int, int, int]] = []
    pos = 0
    dropped: int | None = None  # where words mapped to nothing began ("ce soir" is "tonight")
    for i, (token, key) in enumerate(zip(tokens, keys)):
        word = key if mapping else lowered[i]
        if mapping:
            french_hour = re.fullmatch(r"(\d{1,2})h(\d{2})?", key)
            if french_hour:
                word = f"{french_hour.group(1)}:{french_hour.group(2) or '00'}"
            elif key in OCLOCK_WORDS and len(out) >= 2 and out[-2] == "at" and out[-1].isdigit():
                word = "o'clock"
            elif key == "mañana" and i >= 1 and keys[i - 1] == "la":
                word = "morning"
            else:
                word = mapping.get(key, lowered[i])
        if not word:
            dropped = token.start() if dropped is None else dropped
            continue
        start = pos + (1 if out else 0)
        out.append(word)
        pos = start + len(word)
        spans.append((start, pos, token.start() if dropped is None else dropped, token.end()))
        dropped = None
    text = " ".join(out)
    text = re.sub(r"\bde (?:la|the)? ?(morning)\b", r"in the \1", text)
    return _Words(words, re.sub(r"\b(\d{1,2})\s*([ap])\.m\.", r"\1\2m", text), spans)


def _find_when(words: str, tz: str, now: datetime | None) -> tuple[When, tuple[int, int]]:
    tzinfo = zone(tz)
    now = (now or datetime.now(tzinfo)).astimezone(tzinfo)
    normal = _normalise(words)
    for form, pattern in PATTERNS:
        m = pattern.search(normal.text)
        if m is None:
            continue
        return _build(form, m, tz, tzinfo, now), normal.original_span(*m.span())
    raise ScheduleError(f"no schedule found in {words!r}: {HELP}", found=False)


def _build(form: str, m: re.Match[str], tz: str, tzinfo: ZoneInfo, now: datetime) -> When:
    groups = m.groupdict()
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
        hour, minute = _time(groups.get("time"), groups.get("part"))
        days = _days(m.group("days"))
        trigger = CronTrigger(day_of_week=days, hour=hour, minute=minute, timezone=tzinfo)
        return When(trigger, f"every {_days_text(days)} at {hour:02d}:{minute:02d} ({tz})", tz, False)
    if form == "other":
        hour, minute = _time(groups.get("time"), groups.get("part"))
        day = DAYS[m.group("day")]
        first = _next_weekday(now, day, hour, minute, tzinfo)
        trigger = IntervalTrigger(weeks=2, start_date=first, timezone=tzinfo)
        return When(trigger, f"every other {DAY_NAMES[day]} at {hour:02d}:{minute:02d} ({tz})", tz, False)
    if form == "interval":
        unit = UNITS[_unit_key(m.group("unit"))]
        n = 2 if groups.get("other") else _count(groups.get("n"))
        if n < 1:
            raise ScheduleError("an interval must be at least 1")
        trigger = IntervalTrigger(**{unit: n}, start_date=now + timedelta(**{unit: n}), timezone=tzinfo)
        return When(trigger, f"every {n} {unit} ({tz})" if n != 1 else f"every {unit[:-1]} ({tz})", tz, False,
                    precise=unit == "seconds")
    if form == "in":
        if groups.get("half"):
            delta = timedelta(minutes=30)
        else:
            n, unit = _count(m.group("n")), UNITS[_unit_key(m.group("unit"))]
            if n < 1:
                raise ScheduleError(f"in 0 {unit} is now: say when, e.g. \"in 5 {unit}\"")
            delta = timedelta(**{unit: n})
        return _once(now + delta, tz, tzinfo, precise=delta < timedelta(minutes=1) or delta.seconds % 60 != 0)
    if form == "date":
        day = _date(groups, now)
        hour, minute = _time(groups.get("time"), groups.get("part"))
        run = _exists(datetime(day.year, day.month, day.day, hour, minute, tzinfo=tzinfo), tz)
        if run <= now:
            raise ScheduleError(f"{run:%Y-%m-%d %H:%M} {tz} is in the past")
        return _once(run, tz, tzinfo)
    if form == "weekday":
        hour, minute = _time(groups.get("time"), groups.get("part"))
        return _once(_next_weekday(now, DAYS[m.group("day")], hour, minute, tzinfo), tz, tzinfo)
    day = groups.get("day") or groups.get("day2") or ""  # "at" and "day"
    day = re.sub(r"\s+", " ", day.removeprefix("the ").strip())
    part = groups.get("part") or ("tonight" if day == "tonight" else None)
    if groups.get("time"):
        hour, minute = _time(m.group("time"), part)
    else:
        hour, minute = {"tonight": (20, 0), "evening": (18, 0), "afternoon": (15, 0), "night": (21, 0)}.get(part or "", (9, 0))
    offset = {"tomorrow": 1, "day after tomorrow": 2}.get(day, 0)
    run = now.replace(hour=hour, minute=minute, second=0, microsecond=0) + timedelta(days=offset)
    run = _exists(run.replace(tzinfo=None).replace(tzinfo=tzinfo), tz)
    if run <= now:
        if day in ("today", "tonight"):
            raise ScheduleError(f"{hour:02d}:{minute:02d} today has passed")
        run = _exists((run + timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tzinfo), tz)
    return _once(run, tz, tzinfo)


def _once(run: datetime, tz: str, tzinfo: ZoneInfo, precise: bool = False) -> When:
    shown = f"{run:%Y-%m-%d %H:%M:%S}" if precise else f"{run:%Y-%m-%d %H:%M}"
    return When(DateTrigger(run_date=run, timezone=tzinfo), f"once at {shown} ({tz})", tz, True, precise)


def _exists(run: datetime, tz: str) -> datetime:
    """Refuses a wall-clock time the zone skips (the hour the clocks go forward)."""
    back = run.astimezone(timezone.utc).astimezone(run.tzinfo)
    if back.replace(tzinfo=None) != run.replace(tzinfo=None):
        raise ScheduleError(f"{run:%Y-%m-%d %H:%M} does not exist in {tz}: the clocks go forward that night")
    return run


def _next_weekday(now: datetime, day: str, hour: int, minute: int, tzinfo: ZoneInfo) -> datetime:
    ahead = (WEEKDAY_INDEX[day] - now.weekday()) % 7
    run = datetime.combine(now.date() + timedelta(days=ahead), datetime.min.time()).replace(
        hour=hour, minute=minute, tzinfo=tzinfo)
    if run <= now:
        run = run.replace(tzinfo=None) + timedelta(days=7)
        run = run.replace(tzinfo=tzinfo)
    return _exists(run, str(tzinfo))


def _date(groups: dict[str, str | None], now: datetime) -> date:
    if groups.get("iso"):
        text = groups["iso"] or ""
        y, mo, d = (int(p) for p in text.split("-"))
        year_given = True
    else:
        d = int(groups.get("d") or groups.get("d2") or groups.get("d3") or 0)
        month_word = groups.get("mon") or groups.get("mon2")
        mo = MONTHS[month_word] if month_word else int(groups.get("m3") or 0)
        year = groups.get("y") or groups.get("y2") or groups.get("y3")
        year_given = year is not None
        y = int(year) if year else now.year
        text = f"{y:04d}-{mo:02d}-{d:02d}"
    try:
        day = date(y, mo, d)
    except ValueError:
        raise ScheduleError(f"{text} is not a date") from None
    if not year_given and day < now.date():
        try:
            day = date(y + 1, mo, d)
        except ValueError:
            raise ScheduleError(f"{text} is not a date next year either") from None
    return day


def _time(text: str | None, part: str | None = None) -> tuple[int, int]:
    if not text:
        return 9, 0
    text = re.sub(r"\s+(?:in\s+the\s+)?(?:morning|afternoon|evening|night)$", "", text.strip())
    if text in ("noon", "midday"):
        return 12, 0
    if text == "midnight":
        return 0, 0
    m = re.fullmatch(r"(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm)?\s*(o'?clock)?", text)
    assert m is not None
    hour, minute, half = int(m.group(1)), int(m.group(2) or 0), m.group(3)
    if half:
        if not 1 <= hour <= 12:
            raise ScheduleError(f"{text!r} is not a time: with am/pm the hour is 1 to 12")
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59:
        raise ScheduleError(f"{text!r} is not a time of day: hours run from 0 to 23 and minutes from 0 to 59")
    if part and not half and PARTS.get(part) == 12 and hour < 12:
        hour += 12
    return hour, minute


def _unit_key(unit: str) -> str:
    unit = unit.rstrip("s") if len(unit) > 1 else unit
    return unit if unit in UNITS else unit[:3]


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
    return " and ".join(DAY_NAMES.get(d, d) for d in days.split(","))


def _cron_weekdays(field: str) -> str:
    """Cron counts weekdays from Sunday = 0 (or 7); APScheduler from Monday = 0: use names."""
    names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    return re.sub(r"\d+", lambda d: names[int(d.group())] if int(d.group()) <= 7 else d.group(), field)


def _count(text: str | None) -> int:
    if text is None:
        return 1
    return int(text) if text.isdigit() else NUMBERS[text]
