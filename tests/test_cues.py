"""Answer-type cues: which questions ask for a time, and which words answer them."""

from __future__ import annotations

import pytest

from tiamat_hooks.cues import asks_time, mentions_time


@pytest.mark.parametrize(
    "message",
    [
        "When did Anna move to Lisbon?",
        "when was the concert",
        "What year did we meet?",
        "Which day is the dentist appointment?",
        "How long ago did I start running?",
        "Nice photo! When was that taken?",
        "Nice photo!\nwhen was that taken?",
        '"When did it start?"',
        "So when did you go?",
        "In which year did we meet?",
        "Since when do you play chess?",
    ],
)
def test_time_questions(message: str) -> None:
    assert asks_time(message)


@pytest.mark.parametrize(
    "message",
    [
        "What did you do when it rained?",  # "when" as a conjunction, not a question word
        "When Dave was a child, what did he build?",  # "when" opening a clause
        "Where did Anna move to?",
        "Who came to the party?",
        "How many dogs does Andrew have?",  # counted across sessions, rarely a number in a turn
        "Tell me about the trip.",
        "",
    ],
)
def test_other_messages_ask_for_no_type(message: str) -> None:
    assert not asks_time(message)


@pytest.mark.parametrize(
    "text",
    [
        "We moved there last spring.",
        "It was on a Tuesday.",
        "Back in March 2021.",
        "YESTERDAY, finally!",
        "the year's best day",
        "We met in May.",
        "May 3 was the day.",
    ],
)
def test_time_words(text: str) -> None:
    assert mentions_time(text)


@pytest.mark.parametrize(
    "text",
    [
        "We moved there with the kids.",
        "Chicago was lovely.",  # "ago" inside a word
        "I scored 40 points.",  # a number, but not a year
        "Room 2024b",  # not a word of its own
        "You may go now.",  # "may" the verb
        "The last one, next to the door, since you asked.",
        "I fall asleep easily.",
        "",
    ],
)
def test_not_time_words(text: str) -> None:
    assert not mentions_time(text)
