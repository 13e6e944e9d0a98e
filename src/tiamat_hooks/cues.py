"""Answer-type cues: what kind of words the answer to a question holds.

Question answering has long matched a question's expected answer type against candidate
passages: the answer to "When did ...?" is a time, the answer to "How many ...?" a number. A
lexical search cannot see that — "When did Anna move?" matches "Anna moved" and "Anna hates
moving" alike, while only "Anna moved last spring" answers it. Recall lifts the candidates
that hold a word of the expected type (:attr:`~tiamat_hooks.recall.RecallConfig.
answer_type_weight`); it never adds candidates, so a cue can reorder what the search found but
cannot bring in anything unrelated.

Only two types are read, those whose answer words can be told by their form alone: times and
quantities. Places and people were tried the same way (capitalised words after "in"/"to", names)
and changed nothing on the recall benchmarks, so they are not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .dates import _MONTHS, _WEEKDAYS

__all__ = ["QUANTITY", "TIME", "AnswerType", "answer_type"]

# "When ...?", "What year ...?", "Which day ...?", "How long ago ...?" — at the start of the
# message or of one of its sentences ("Nice. When was that?"); "when" inside a sentence is a
# conjunction ("What did you do when it rained?").
_ASKS_TIME = re.compile(
    r"(?:^|[.!?]\s+)\W*(?:when\b|(?:what|which)\s+(?:time|date|day|year|month|week)\b"
    r"|how\s+long\s+ago\b)",
    re.IGNORECASE,
)
_ASKS_QUANTITY = re.compile(r"\bhow\s+(?:many|much|often|long)\b", re.IGNORECASE)

_TIME_WORDS = frozenset(
    {
        "yesterday", "today", "tonight", "tomorrow", "ago", "last", "next", "recently",
        "earlier", "since", "weekend", "week", "month", "year", "morning", "afternoon",
        "evening", "night", "summer", "winter", "spring", "autumn", "fall",
        *_WEEKDAYS,
        *_MONTHS,
    }
)  # fmt: skip
_QUANTITY_WORDS = frozenset(
    {
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "dozen", "dozens", "couple", "several", "once", "twice", "first",
        "second", "third",
    }
)  # fmt: skip
_TOKEN = re.compile(r"[a-z0-9]+")
_YEAR = re.compile(r"\b(?:1[89]|2\d)\d\d\b")
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True, slots=True)
class AnswerType:
    """A kind of answer and the words that hold one."""

    name: str
    """``"time"`` or ``"quantity"``."""
    words: frozenset[str]
    """Lower-case words of the type; numbers are read by their form (years for a time, any
    digits for a quantity)."""

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds a word of this type (about 10 µs for a 200-character turn:
        recall asks this of every candidate of a "when" or "how many" question)."""
        if (_DIGIT if self.name == "quantity" else _YEAR).search(text):
            return True
        return not self.words.isdisjoint(_TOKEN.findall(text.lower()))


TIME = AnswerType("time", _TIME_WORDS)
QUANTITY = AnswerType("quantity", _QUANTITY_WORDS)


def answer_type(message: str) -> AnswerType | None:
    """The type of answer ``message`` asks for, or ``None`` when it asks for no such type.

    A time question ("When did ...?", "What year ...?") asks for :data:`TIME` (dates, months,
    weekdays, "yesterday", "last week"); a quantity question ("How many ...?", "How often
    ...?") for :data:`QUANTITY` (numbers and number words). A question asking both ("When ...
    how many?") reads as a time question.
    """
    head = message[:2000]
    if _ASKS_TIME.search(head):
        return TIME
    if _ASKS_QUANTITY.search(head):
        return QUANTITY
    return None
