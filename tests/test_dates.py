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


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # a calendar date is its day, with a day either side for time zones
        ("What did I show Anna on October 13, 2022?", [(date(2022, 10, 12), date(2022, 10, 15))]),
        ("What did Gina find on 1 February, 2023?", [(date(2023, 1, 31), date(2023, 2, 3))]),
        ("on the 3rd of April", [(date(2023, 4, 2), date(2023, 4, 5))]),
        ("what did I say 2023-03-07?", [(date(2023, 3, 6), date(2023, 3, 9))]),
        # no year: the latest such date not after today
        ("what happened on April 2nd", [(date(2023, 4, 1), date(2023, 4, 4))]),
        ("what happened on May 2nd", [(date(2022, 5, 1), date(2022, 5, 4))]),
        # shifted: the span between the two dates, with the unit's slack
        (
            "the puppy I got two weeks before March 11, 2023",
            [(date(2023, 2, 22), date(2023, 3, 12))],
        ),
        ("the week before April 3", [(date(2023, 3, 24), date(2023, 4, 4))]),
        ("the day after March 1", [(date(2023, 3, 1), date(2023, 3, 4))]),
        # a year on its own, never a future one
        ("How often did I go to the beach in 2022?", [(date(2022, 1, 1), date(2023, 1, 1))]),
        ("my plans in 2031", []),
    ],
)
def test_calendar_dates(message: str, expected: list[tuple[date, date]]) -> None:
    assert days(message) == expected


def test_impossible_or_ambiguous_dates_give_no_window() -> None:
    assert days("on February 30, 2023") == []
    # "may" followed by a number is still the verb unless a year or "on" says otherwise
    assert days("I may 3x the recipe") == []
    assert days("on May 3") == [(date(2022, 5, 2), date(2022, 5, 5))]
    assert days("the day after May 1") == [(date(2022, 5, 1), date(2022, 5, 4))]
    # "of October 2022" is the month; its year is not read again as a year of its own
    assert days("the first weekend of October 2022") == [(date(2022, 10, 1), date(2022, 11, 1))]
