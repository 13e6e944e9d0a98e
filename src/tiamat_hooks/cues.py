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
from collections.abc import Mapping
from dataclasses import dataclass, field

from .dates import MONTHS, WEEKDAYS

__all__ = ["TIME", "AnswerType", "answer_type"]

# A time question: "When did/was/...", "What/Which year/day/...", "How long ago", optionally
# after a conjunction ("So when did") or a preposition ("In which year", "Since when did"), at
# the start of the message, of a sentence or of a line ("Nice photo! When was that?"). "When"
# followed by anything but an auxiliary opens a clause, not a question ("When Dave was a child,
# what did he build?"). The sentence-start classes are disjoint (punctuation, then spaces, then
# opening quotes), so a long run of "! ! ! " cannot make the search backtrack.
_ASKS_TIME = re.compile(
    r"(?:^\s*|[.!?\n][ \t]*)[\"'“‘(\[*_-]*(?:(?:so|and|but|then)\W+)?"
    r"(?:(?:in|on|at|by|since|until|from)\s+)?"
    r"(?:when\s+(?:did|do|does|was|were|is|are|will|would|has|have|had|can|could|should)\b"
    r"|(?:what|which)\s+(?:time|date|day|year|month|week)\b"
    r"|how\s+long\s+ago\b)",
    re.IGNORECASE,
)

# Words that mention a time on their own. Left out, because they mostly mean something else:
# "last" ("the last one"), "next" ("next to"), "since" ("since you asked"), "fall" (the verb);
# "last week" and "since 2019" still count through "week" and the year.
_TIME_WORDS = frozenset(
    {
        "yesterday", "today", "tonight", "tomorrow", "ago", "recently", "earlier", "weekend",
        "week", "month", "year", "morning", "afternoon", "evening", "night", "summer",
        "winter", "spring", "autumn",
        *WEEKDAYS,
        *(m for m in MONTHS if m != "may"),
    }
)  # fmt: skip
# "May" is a month only in a date's company ("in May", "May 3"), else the verb.
_MAY = re.compile(
    r"\b(?:in|of|since|during|early|late|mid|last|next|this|until|by)\s+may\b|\bmay\s+\d",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+")
_YEAR = re.compile(r"\b(?:1[89]|2\d)\d\d\b")


@dataclass(frozen=True, slots=True)
class AnswerType:
    """A kind of answer and how to tell a text that holds one."""

    words: frozenset[str]
    """Lower-case words that are of the type wherever they stand."""
    pattern: re.Pattern[str] | None = None
    """Forms no word list holds (for a time: a year)."""
    ambiguous: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    """Words of the type only in some company: the word, and the pattern that must match."""

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds a word of this type. Recall asks this of every candidate of
        a question of this type, so words are tested first (one pass over the text)."""
        found = set(_WORD.findall(text.lower()))
        if not self.words.isdisjoint(found):
            return True
        if any(w in found and p.search(text) for w, p in self.ambiguous.items()):
            return True
        return self.pattern is not None and self.pattern.search(text) is not None


TIME = AnswerType(_TIME_WORDS, _YEAR, {"may": _MAY})
"""Weekdays, months, years and relative times ("yesterday", "two weeks ago", "last spring")."""


def answer_type(message: str) -> AnswerType | None:
    """The type of answer ``message`` asks for: :data:`TIME` for a time question ("When did
    ...?", "What year ...?", "In which month ...?", "How long ago ...?"), else ``None``. Only
    the first 2,000 characters are read."""
    return TIME if _ASKS_TIME.search(message[:2000]) else None
