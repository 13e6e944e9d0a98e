"""Answer-type cues: what kind of words the answer to a question holds.

Question answering has long matched a question's expected answer type against candidate
passages: the answer to "When did ...?" is a time. A lexical search cannot see that — "When did
Anna move?" matches "Anna moved" and "Anna hates moving" alike, while only "Anna moved last
spring" answers it. Recall lifts the candidates that hold a word of the expected type
(:attr:`~tiamat_hooks.recall.RecallConfig.answer_type_weight`); it never adds candidates, so a
cue can reorder what the search found but cannot bring in anything unrelated.

Only time is read. Quantities ("How many ...?" lifting turns with numbers), places and people
were tried the same way and moved as many questions down as up on the recall benchmarks: the
answer to "how many X have I tried?" is a count across sessions, rarely a number in one turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .dates import _MONTHS, _WEEKDAYS

__all__ = ["TIME", "AnswerType", "answer_type"]

# "When ...?", "What year ...?", "Which day ...?", "How long ago ...?" — at the start of the
# message or of one of its sentences ("Nice. When was that?"); "when" inside a sentence is a
# conjunction ("What did you do when it rained?").
_ASKS_TIME = re.compile(
    r"(?:^|[.!?]\s+)\W*(?:when\b|(?:what|which)\s+(?:time|date|day|year|month|week)\b"
    r"|how\s+long\s+ago\b)",
    re.IGNORECASE,
)

_TIME_WORDS = frozenset(
    {
        "yesterday", "today", "tonight", "tomorrow", "ago", "last", "next", "recently",
        "earlier", "since", "weekend", "week", "month", "year", "morning", "afternoon",
        "evening", "night", "summer", "winter", "spring", "autumn", "fall",
        *_WEEKDAYS,
        *_MONTHS,
    }
)  # fmt: skip
_TOKEN = re.compile(r"[a-z0-9]+")
_YEAR = re.compile(r"\b(?:1[89]|2\d)\d\d\b")


@dataclass(frozen=True, slots=True)
class AnswerType:
    """A kind of answer and the words that hold one."""

    name: str
    words: frozenset[str]
    """Lower-case words of the type."""
    numbers: re.Pattern[str] | None = None
    """Numbers of the type, read by their form (a year, for a time)."""

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds a word of this type (about 10 µs for a 200-character turn:
        recall asks this of every candidate of a question of this type)."""
        if self.numbers is not None and self.numbers.search(text):
            return True
        return not self.words.isdisjoint(_TOKEN.findall(text.lower()))


TIME = AnswerType("time", _TIME_WORDS, _YEAR)
"""Dates, months, weekdays and relative times ("yesterday", "last week", "in 2021")."""


def answer_type(message: str) -> AnswerType | None:
    """The type of answer ``message`` asks for: :data:`TIME` for a time question ("When did
    ...?", "What year ...?", "How long ago ...?"), else ``None``."""
    return TIME if _ASKS_TIME.search(message[:2000]) else None
