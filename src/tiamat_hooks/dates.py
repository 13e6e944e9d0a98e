"""Date cues in a message, resolved against ``now``: "yesterday", "two weeks ago", "last Tuesday",
"in March", "on October 13, 2023", "two weeks before August 11", "in 2022".

Recall uses them to lift memories from the days a message points at. Only phrases whose meaning
is unambiguous relative to ``now`` are read; anything else yields no window (and no lift). Every
window is a half-open ``[start, end)`` range in UTC, with some slack where people are vague
("a month ago" means roughly that month, not that day).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["MONTHS", "WEEKDAYS", "date_windows"]

_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "a couple of": 2,
    "a few": 3,
    "few": 3,
    "several": 3,
}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
# Slack either side of an "N units ago" point, per unit.
_SLACK_DAYS = {"day": 1, "week": 3, "month": 12, "year": 60}

_NUM = "|".join(sorted((re.escape(k) for k in _NUMBERS), key=len, reverse=True))
_AGO = re.compile(rf"\b(\d{{1,3}}|{_NUM})\s+(day|week|month|year)s?\s+ago\b")
_LAST_UNIT = re.compile(r"\b(?:last|past|previous)\s+(week|weekend|month|year)\b")
_WEEKDAY = re.compile(rf"\b(?:last|on|this\s+past)\s+({'|'.join(WEEKDAYS)})\b")
# "may" is also a verb, so a month name needs "in/during/since/of/last" before it.
_MONTH = re.compile(
    rf"\b(?:in|during|since|of|last|early|late|mid)\s+({'|'.join(MONTHS)})(?:\s+(\d{{4}}))?\b"
)
_MONTH_NAMES = "|".join(MONTHS)
_ORD = r"(\d{1,2})(?:st|nd|rd|th)?"
# Calendar dates: "October 13, 2023", "13 October 2023", "on the 13th of October", "2023-10-13";
# the year is optional. Optionally shifted: "two weeks before August 11", "the day after ...".
_SHIFT = rf"(?:(\d{{1,3}}|{_NUM}|the)\s+(day|week|month)s?\s+(before|after)\s+)?"
_DATE_MD = re.compile(rf"\b{_SHIFT}(?:on\s+)?({_MONTH_NAMES})\s+{_ORD}\b(?:,?\s+(\d{{4}})\b)?")
_DATE_DM = re.compile(
    rf"\b{_SHIFT}(?:on\s+)?(?:the\s+)?{_ORD}\s+(?:of\s+)?({_MONTH_NAMES})\b(?:,?\s+(\d{{4}})\b)?"
)
_DATE_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_YEAR = re.compile(r"\b(?:in|during|of|since)\s+((?:19|20)\d{2})\b")
_DAY = re.compile(r"\b(yesterday|today|tonight|this\s+morning|the\s+day\s+before\s+yesterday)\b")


def _day_start(dt: datetime) -> datetime:
    return dt.replace(hour=0, minute=0, second=0, microsecond=0)


def date_windows(message: str, now: datetime) -> list[tuple[datetime, datetime]]:
    """Date ranges ``message`` refers to, relative to ``now`` (UTC), in order of appearance."""
    text = message[:2000].lower()
    now = now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)
    today = _day_start(now)
    found: list[tuple[int, tuple[datetime, datetime]]] = []
    for m in _DAY.finditer(text):
        word = m.group(1)
        back = 2 if word.startswith("the day") else 1 if word == "yesterday" else 0
        start = today - timedelta(days=back)
        found.append((m.start(), (start, start + timedelta(days=1))))
    for m in _AGO.finditer(text):
        raw, unit = m.group(1), m.group(2)
        n = int(raw) if raw.isdigit() else _NUMBERS[raw]
        point = today - timedelta(days=n * _UNIT_DAYS[unit])
        slack = timedelta(days=_SLACK_DAYS[unit])
        found.append((m.start(), (point - slack, point + slack + timedelta(days=1))))
    for m in _LAST_UNIT.finditer(text):
        unit = m.group(1)
        if unit == "weekend":
            back = (today.weekday() - 5) % 7 or 7  # the latest Saturday before today
            start = today - timedelta(days=back)
            found.append((m.start(), (start, start + timedelta(days=2))))
        else:
            span = _UNIT_DAYS[unit]
            found.append((m.start(), (today - timedelta(days=2 * span), today)))
    for m in _WEEKDAY.finditer(text):
        back = (today.weekday() - WEEKDAYS.index(m.group(1))) % 7 or 7
        start = today - timedelta(days=back)
        found.append((m.start(), (start, start + timedelta(days=1))))
    claimed: list[tuple[int, int]] = []
    for pattern, order in ((_DATE_MD, "md"), (_DATE_DM, "dm")):
        for m in pattern.finditer(text):
            if _overlaps(m, claimed):
                continue
            n_raw, unit, direction = m.group(1), m.group(2), m.group(3)
            month_s, day_s = (m.group(4), m.group(5)) if order == "md" else (m.group(5), m.group(4))
            if month_s == "may" and order == "md" and not (m.group(6) or unit or "on " in m[0]):
                continue  # "I may 2x it": the verb, not the month
            window = _calendar_day(
                MONTHS.index(month_s) + 1, int(day_s), m.group(6), today, n_raw, unit, direction
            )
            if window is not None:
                claimed.append((m.start(), m.end()))
                found.append((m.start(), window))
    for m in _MONTH.finditer(text):
        if _overlaps(m, claimed):
            continue  # the month of a calendar date already read
        month = MONTHS.index(m.group(1)) + 1
        year = int(m.group(2)) if m.group(2) else today.year
        if not m.group(2) and month > today.month:
            year -= 1  # the latest such month, not a future one
        start = datetime(year, month, 1, tzinfo=timezone.utc)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
        found.append((m.start(), (start, end)))
    for m in _DATE_ISO.finditer(text):
        window = _calendar_day(int(m.group(2)), int(m.group(3)), m.group(1), today)
        if window is not None:
            found.append((m.start(), window))
    for m in _YEAR.finditer(text):
        year = int(m.group(1))
        if _overlaps(m, claimed) or year > today.year:
            continue
        start = datetime(year, 1, 1, tzinfo=timezone.utc)
        found.append((m.start(), (start, start.replace(year=year + 1))))
    return [w for _, w in sorted(found, key=lambda x: x[0])]


def _overlaps(m: re.Match[str], spans: list[tuple[int, int]]) -> bool:
    """Whether match ``m`` overlaps one of ``spans`` (text a calendar date already read)."""
    return any(a < m.end() and m.start() < b for a, b in spans)


def _calendar_day(
    month: int,
    day_of_month: int,
    year_s: str | None,
    today: datetime,
    n_raw: str | None = None,
    unit: str | None = None,
    direction: str | None = None,
) -> tuple[datetime, datetime] | None:
    """The window of a calendar date (a day either side: time zones), or of "N units before/after"
    it (the span between the two, with the unit's slack). No year: the latest such date not
    after today. An impossible date ("February 30") is no window."""
    try:
        year = int(year_s) if year_s else today.year
        point = datetime(year, month, day_of_month, tzinfo=timezone.utc)
        if not year_s and point > today:
            point = point.replace(year=year - 1)
    except ValueError:
        return None
    if unit is None:
        return (point - timedelta(days=1), point + timedelta(days=2))
    n = 1 if n_raw in (None, "the") else int(n_raw) if n_raw.isdigit() else _NUMBERS[n_raw]
    shift = timedelta(days=n * _UNIT_DAYS[unit])
    slack = timedelta(days=_SLACK_DAYS[unit])
    if direction == "before":
        return (point - shift - slack, point + timedelta(days=1))
    return (point, point + shift + slack + timedelta(days=1))
