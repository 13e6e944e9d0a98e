"""Date cues in messages, resolved against ``now``."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from tiamat_hooks.dates import date_windows

# A Tuesday.
NOW = datetime(2023, 4, 18, 15, 30, tzinfo=timezone.utc)


def days(message: str, now: datetime = NOW) -> list[tuple[date, date]]:
    return [(a.date(), b.date()) for a, b in date_windows(message, now)]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("what did I eat yesterday?", [(date(2023, 4, 17), date(2023, 4, 18))]),
        ("any plans for tonight?", [(date(2023, 4, 18), date(2023, 4, 19))]),
        ("the day before yesterday", [(date(2023, 4, 16), date(2023, 4, 17))]),
        # last <weekday> is the latest one strictly before today (a week back when it is today)
        ("Who did I have lunch with last Tuesday?", [(date(2023, 4, 11), date(2023, 4, 12))]),
        ("what happened on Sunday", [(date(2023, 4, 16), date(2023, 4, 17))]),
        ("3 days ago", [(date(2023, 4, 14), date(2023, 4, 17))]),
        ("two weeks ago", [(date(2023, 4, 1), date(2023, 4, 8))]),
        # a month not yet reached this year is last year's
        ("in June", [(date(2022, 6, 1), date(2022, 7, 1))]),
        ("during March", [(date(2023, 3, 1), date(2023, 4, 1))]),
        ("in December 2021", [(date(2021, 12, 1), date(2022, 1, 1))]),
        ("last weekend", [(date(2023, 4, 15), date(2023, 4, 17))]),
    ],
)
def test_phrases(message: str, expected: list[tuple[date, date]]) -> None:
    assert days(message) == expected


def test_no_cue_no_window() -> None:
    assert days("What is my favourite colour?") == []
    # "may" the verb is not the month
    assert days("You may remember my sister's name") == []


def test_windows_follow_the_message_order() -> None:
    found = days("Did I go out last Friday or yesterday?")
    assert found == [
        (date(2023, 4, 14), date(2023, 4, 15)),
        (date(2023, 4, 17), date(2023, 4, 18)),
    ]


def test_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert days("yesterday", naive) == days("yesterday")
