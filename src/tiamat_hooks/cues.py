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

from .dates import MONTHS, WEEKDAYS

__all__ = ["asks_time", "mentions_time"]

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
# Word parts, apostrophes splitting ("yesterday's" holds "yesterday"), unlike ``text.words``.
_PARTS = re.compile(r"[^\W_]+")
_YEAR = re.compile(r"\b(?:1[89]|2\d)\d\d\b")


def asks_time(message: str) -> bool:
    """Whether ``message`` asks for a time: "When did ...?", "What year ...?", "In which month
    ...?", "How long ago ...?". Only the first 2,000 characters are read."""
    return _ASKS_TIME.search(message[:2000]) is not None


def mentions_time(text: str) -> bool:
    """Whether ``text`` holds a time word: a weekday, a month, a year, a relative time
    ("yesterday", "two weeks ago", "last spring"). Recall asks this of every candidate of a
    time question, so the word list is tested first, in one pass over the text."""
    parts = set(_PARTS.findall(text.lower()))
    if not _TIME_WORDS.isdisjoint(parts):
        return True
    if "may" in parts and _MAY.search(text):
        return True
    return _YEAR.search(text) is not None
