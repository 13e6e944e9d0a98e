"""Text helpers shared by every store and by recall: query words, index units, sentence windows.

Keeping these in one place means SQLite, Postgres and recall agree on what a "word" is and on how
a long turn is split, so a span reported by a store is a span recall can render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "STOP_WORDS",
    "IndexUnit",
    "index_units",
    "query_terms",
    "sentence_windows",
    "words",
]

# A compact English stop-word list (articles, pronouns, auxiliaries, question words). Removing
# these from queries matters: OR-ing "what", "did", "the" drowns the content words.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's i
    i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my
    myself no nor not of off on once only or other ought our ours ourselves out over own same
    shan't she she'd she'll she's should shouldn't so some such than that that's the their
    theirs them themselves then there there's these they they'd they'll they're they've this
    those through to too under until up very was wasn't we we'd we'll we're we've were weren't
    what what's when when's where where's which while who who's whom why why's will with won't
    would wouldn't you you'd you'll you're you've your yours yourself yourselves also just did
    does ever get got would could should s t d ll m re ve
    """.split()  # noqa: SIM905 - a word list reads better as text
)

# Words are runs of letters/digits (any script), keeping inner apostrophes. Everything else —
# FTS operators, quotes, column filters, NUL bytes, emoji — is a separator.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)

MAX_QUERY_TERMS = 64
"""Most distinct terms a query keeps (the first ones, in order)."""


def words(text: str) -> list[str]:
    """Every word of ``text``, lower-cased, in order (stop words included)."""
    return [w.lower() for w in _WORD.findall(text)]


def query_terms(text: str, *, max_terms: int = MAX_QUERY_TERMS) -> list[str]:
    """Lower-cased content words of ``text`` in first-seen order, stop words removed.

    Each returned term contains only letters and digits (and inner apostrophes), so it can be
    quoted safely into any full-text syntax. If every word is a stop word, the stop words are
    kept (a query like "who is it" should still find something).
    """
    found = words(text[:100_000])
    seen: dict[str, None] = {}
    for w in found:
        if w not in STOP_WORDS and len(w) <= 64:
            seen.setdefault(w, None)
    if not seen:
        for w in found:
            if len(w) <= 64:
                seen.setdefault(w, None)
    return list(seen)[:max_terms]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_windows(text: str, *, max_chars: int) -> list[tuple[int, int]]:
    """Split ``text`` into ``(start, end)`` character windows of whole sentences.

    Windows are at most ``max_chars`` long unless one sentence alone is longer (then it is cut at
    whitespace). Windows are contiguous and cover the text; a text shorter than ``max_chars`` is
    one window.
    """
    n = len(text)
    if n <= max_chars:
        return [(0, n)]
    # Sentence boundaries.
    bounds: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > start:
            bounds.append((start, m.end()))
            start = m.end()
    if start < n:
        bounds.append((start, n))
    # Hard-cut overlong sentences at whitespace.
    pieces: list[tuple[int, int]] = []
    for s, e in bounds:
        while e - s > max_chars:
            cut = text.rfind(" ", s + max_chars // 2, s + max_chars)
            cut = cut + 1 if cut > s else s + max_chars
            pieces.append((s, cut))
            s = cut
        if e > s:
            pieces.append((s, e))
    # Greedy merge into windows.
    windows: list[tuple[int, int]] = []
    ws, we = pieces[0]
    for s, e in pieces[1:]:
        if e - ws <= max_chars:
            we = e
        else:
            windows.append((ws, we))
            ws, we = s, e
    windows.append((ws, we))
    return windows


@dataclass(frozen=True, slots=True)
class IndexUnit:
    """One searchable unit of a record: its whole text, or a window of a long text.

    ``context`` is extra text indexed with the unit but not part of it (the previous short turn),
    so a reply like "Yes, in May" is found by the words of the question it answers.
    """

    start: int
    end: int
    body: str
    context: str


LONG_UNIT_CHARS = 600
"""Records longer than this are indexed as sentence windows of about this size (~128 tokens)."""

CONTEXT_MAX_CHARS = 300
"""A previous turn at most this long (~64 tokens) is indexed as context of the next one."""


def index_units(
    text: str,
    previous: str | None = None,
    *,
    speaker: object = None,
    max_units: int | None = None,
) -> list[IndexUnit]:
    """The units a store indexes for one record (see :class:`IndexUnit`).

    ``speaker`` (a non-empty string; anything else is ignored) goes into the first unit's context
    before ``previous``: who said it is part of what a turn is about ("what did Ann say about
    ..."). The context is kept only when it is at most :data:`CONTEXT_MAX_CHARS` long. With
    ``max_units``, the last allowed unit runs to the end of the text.
    """
    if isinstance(speaker, str) and speaker:
        previous = f"{speaker}: {previous or ''}"
    context = previous if previous is not None and len(previous) <= CONTEXT_MAX_CHARS else ""
    if len(text) <= LONG_UNIT_CHARS:
        return [IndexUnit(0, len(text), text, context)]
    windows = sentence_windows(text, max_chars=LONG_UNIT_CHARS)
    if max_units is not None and len(windows) > max_units:
        keep = windows[: max_units - 1]
        windows = [*keep, (windows[max_units - 1][0], len(text))]
    return [
        IndexUnit(s, e, text[s:e], context if i == 0 else "") for i, (s, e) in enumerate(windows)
    ]
