"""Date cues in a message, resolved against ``now``: "yesterday", "two weeks ago", "last Tuesday".

Recall uses them to lift memories from the days a message points at. Only phrases whose meaning
is unambiguous relative to ``now`` are read; anything else yields no window (and no lift). Every
window is a half-open ``[start, end)`` range in UTC, with some slack where people are vague
("a month ago" means roughly that month, not that day).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["date_windows"]

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
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = [
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
]
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
# Slack either side of an "N units ago" point, per unit.
_SLACK_DAYS = {"day": 1, "week": 3, "month": 12, "year": 60}

_NUM = "|".join(sorted((re.escape(k) for k in _NUMBERS), key=len, reverse=True))
_AGO = re.compile(rf"\b(\d{{1,3}}|{_NUM})\s+(day|week|month|year)s?\s+ago\b")
_LAST_UNIT = re.compile(r"\b(?:last|past|previous)\s+(week|weekend|month|year)\b")
_WEEKDAY = re.compile(rf"\b(?:last|on|this\s+past)\s+({'|'.join(_WEEKDAYS)})\b")
# "may" is also a verb, so a month name needs "in/during/since/of/last" before it.
_MONTH = re.compile(
    rf"\b(?:in|during|since|of|last|early|late|mid)\s+({'|'.join(_MONTHS)})(?:\s+(\d{{4}}))?\b"
)
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
        back = (today.weekday() - _WEEKDAYS.index(m.group(1))) % 7 or 7
        start = today - timedelta(days=back)
        found.append((m.start(), (start, start + timedelta(days=1))))
    for m in _MONTH.finditer(text):
        month = _MONTHS.index(m.group(1)) + 1
        year = int(m.group(2)) if m.group(2) else today.year
        if not m.group(2) and month > today.month:
            year -= 1  # the latest such month, not a future one
        start = datetime(year, month, 1, tzinfo=timezone.utc)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
        found.append((m.start(), (start, end)))
    return [w for _, w in sorted(found, key=lambda x: x[0])]
