"""Memory for OpenAI Agents SDK runs: ``Runner.run(agent, input, hooks=TiamatHooks(...))``.

:class:`TiamatHooks` is a :class:`agents.RunHooks`. Per run it does two things:

**Recall and injection.** On the first model call of a run it recalls memory for the newest user
message (plus recent context when that message is short) in the scope chosen by the application
(``user_id``, never the model), caches the :class:`~tiamat_hooks.recall.RecallResult`, and
injects a copy of it before *every* model call of the run (after tool calls and handoffs too):
the SDK never keeps injected input, so each call needs it again, but recall is paid once.
Memory is ONE input item (a ``user`` message by default, ``role=`` to change it) inserted just
before the run's new input, whose text is the recall block (quoted data with dates). With
``inject_into_instructions=True`` it is appended to the instructions instead (needs the filter,
below). Records already visible in the model input (history replayed from an SDK Session) are
excluded from recall.

Two ways to inject, usable together (memory is then injected exactly once: the injected item is
recognised by its first line and never injected twice):

* hooks alone: openai-agents 0.24 hands ``on_llm_start`` the very list it sends to the model, so
  inserting into it reaches the model. This is pinned by a test; on other SDK versions a warning
  says to add the filter.
* ``hooks.input_filter`` as ``RunConfig.call_model_input_filter`` (or ``hooks.wrap(...)`` to
  compose with a filter or RunConfig you already have): the documented SDK extension point.

**Persistence.** The run's new turns (user input, assistant messages, tool calls and outputs,
handoffs) are stored exactly once as ``turn`` records, with or without an SDK Session, in
``Runner.run``, ``run_streamed`` and ``run_sync``. The SDK has no run-end or run-error hook, so
turns are written incrementally as they appear (input at ``on_llm_start``, model output at
``on_llm_end``, tool output at ``on_tool_end``), each under a deterministic idempotency key (run id
+ position): a run that fails midway keeps everything produced before the error, and a retried
write never duplicates. History replayed from a Session (or passed back by the caller) is
recognised against the newest stored turns of the same ``(user_id, session_id)`` and not stored
again; injected memory is never stored. Each message records who said it (``meta["speaker"]``):
the agent's name for what its model said, ``user_name`` (when given) for the user's messages;
recall quotes turns under that name. Writes run in background tasks, in order per session;
``await hooks.flush()`` (or ``async with``) waits for them; ``hooks.flush_sync()`` (or ``with``)
does the same after ``Runner.run_sync``.

**Compaction.** Two halves (:mod:`tiamat_hooks.compaction`):

* *Summaries in the store, after the run.* At ``on_agent_end`` a background task, chained after
  the session's writes (runs never wait for it), runs :meth:`Compactor.compact`: once the
  session's turns no summary covers exceed ``compact_after_tokens``, the oldest span becomes a
  ``summary`` record (summaries of summaries when they pile up; never cut between a tool call
  and its output; idempotent keys; retried). One compaction per session at a time; a request
  while one runs makes it go round once more. A failure keeps the raw turns, is counted in
  ``stats.failures["compact"]`` and logged once per session; with ``strict=True`` it is raised
  by :meth:`flush`. ``flush()`` waits for compactions too. Turns are never deleted or edited.
* *Model input within ``context_budget``, before every model call* (hooks-only: in
  ``on_llm_start``, on the list the SDK sends; filter: in the returned ``ModelInputData``; the
  same function either way). When history + new input + memory exceed the budget, the oldest
  history items a stored summary covers are replaced by ONE quoted summary item; the memory
  item, the newest user message and the tool calls after it stay verbatim; a tool call and its
  output are kept or removed together (never an orphan ``function_call_output``). Items no
  summary covers yet (the newest stored turns) are **kept**; only if the input still does not
  fit are the oldest of them **trimmed**, whole call/output groups, oldest first — the last four
  groups of history go last, so a very long last reply yields to memory rather than pushing the
  input over budget. If the protected items alone exceed the budget (a huge request) the input
  is sent as is and ``stats.over_budget`` counts it. The session's summaries are read once per
  run (re-read after a compaction of that session finishes). History items compaction removes
  are no longer "visible", so recall may bring the relevant ones back; recall's budget is
  inside ``context_budget``. SDK Sessions are untouched: ``get_items()``, ``pop_item()`` and
  ``clear_session()`` behave exactly as without the hooks.

**Facts.** With ``facts=True`` the current facts (:mod:`tiamat_hooks.facts`) and notes that
match the message are shown under "Known facts" in the memory block, inside ``token_budget``;
a superseded value never is. Extraction of facts by a model is off unless ``fact_extractor`` is
given. :meth:`TiamatHooks.tools` gives the model ``search_memory``/``remember``/``learn_fact``
bound to the run's scope.

**Failures.** A :class:`~tiamat_hooks.errors.StoreError` never fails the run: recall injects
nothing, writes are dropped; each is counted in :attr:`TiamatHooks.stats` and logged once per run.
With ``strict=True`` store errors raise into the run instead (and writes are awaited inline so
they can). Misuse (a bad ``user_id``) always raises.

**Scope and sessions.** ``user_id``, ``session_id`` and ``agent_id`` are strings or callables of
the run's :class:`~agents.RunContextWrapper` (in the filter, a wrapper holding only
``.context``), so one hooks object serves many users concurrently; per-run state is keyed by the
run, never kept on the object alone. Turns carry ``session_id`` (``"default"`` when not given:
pass the SDK Session's id when you use one) and ``agent_id`` (the agent's name when not given).
Recall searches all of the user's sessions, narrowed to ``agent_id`` only when it is given.

**Tracing.** ``tiamat.recall`` and ``tiamat.persist`` custom spans carry counts, tokens and
timings; the query and the memory text only when ``trace_include_sensitive_data`` is true (its
default follows the SDK's ``OPENAI_AGENTS_TRACE_INCLUDE_SENSITIVE_DATA``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Literal, TypeAlias, overload

from agents import Agent, FunctionTool, RunConfig, RunContextWrapper, RunHooks
from agents.items import ModelResponse, TResponseInputItem
from agents.models.interface import Model
from agents.run_config import CallModelData, ModelInputData
from agents.tool import Tool
from agents.tracing import custom_span, get_current_trace

from .compaction import (
    ITEM_OVERHEAD_TOKENS,
    CompactedInput,
    Compactor,
    ExtractiveSummarizer,
    ModelSummarizer,
    Summarizer,
    compact_input,
    seq_map_from_history,
)
from .errors import ConfigError, StoreError, SummarizationError
from .facts import FactExtractor, learn, relevant_fact_lines
from .items import item_role, item_text, item_to_record, to_jsonable
from .models import MemoryRecord, Scope, SearchHit, new_id, utcnow
from .recall import RecallConfig, Recaller, RecallResult
from .redaction import redact_json
from .rerank import Reranker, check_reranker
from .stores import MemoryStore, open_store
from .tokens import TokenCounter
from .tools import memory_tools

__all__ = ["HookStats", "IdSource", "InputFilter", "TiamatHooks"]

logger = logging.getLogger("tiamat_hooks")

IdSource: TypeAlias = "str | Callable[[RunContextWrapper[Any]], str]"
"""An id, or a function of the run context that returns one (for per-user/per-session scoping)."""

InputFilter: TypeAlias = Callable[
    [CallModelData[Any]], "Awaitable[ModelInputData] | ModelInputData"
]
"""The shape of ``RunConfig.call_model_input_filter``."""

DEFAULT_SESSION_ID = "default"
DEFAULT_TOKEN_BUDGET = 1024

_VERIFIED_SDK = (0, 24)
"""SDK minor version whose ``on_llm_start`` is verified to receive the list sent to the model."""

_FRAME = "<memory>\n"
"""First line of everything this package injects into model input (recall.py, compaction.py)."""

_TAIL_SLACK = 16
"""Extra stored turns read beyond the input length when matching replayed history."""

_CACHE_SIZE = 256
_CACHE_TTL = 600.0
"""Seconds a filter-side recall is reused for a later call with the same conversation prefix."""

_CONTEXT_ITEMS = 6
"""Messages before the newest user message offered to recall as context for short queries."""

_FACT_LINES = 10
"""Most "Known facts" lines recalled into the block."""

_FILTERED_SIZE = 256
"""Filter outputs remembered so ``on_llm_start`` can see the input the filter was given."""


@dataclass
class HookStats:
    """Counters of one :class:`TiamatHooks` object (all runs). Read them; do not write them.

    ``recalls``: recall operations that completed. ``injections``: model calls that received
    memory. ``records_persisted``: turn records the store acknowledged. ``compactions``:
    background compactions of a session that completed (whether or not they had anything to
    summarize). ``summaries_written``: summary records those compactions returned.
    ``input_compactions``: model calls whose input was shrunk to ``context_budget``.
    ``over_budget``: model calls sent over ``context_budget`` because the protected items alone
    (memory, the request, this run's tool calls) exceed it. ``facts_learned``: triples stored by
    the optional fact extractor. ``failures``: failures by operation (``"recall"``, ``"persist"``,
    ``"compact"``, ``"facts"``, ``"rerank"``: recall went on in its own order).
    ``last_error_type``: class name of the newest failure.
    """

    recalls: int = 0
    injections: int = 0
    records_persisted: int = 0
    compactions: int = 0
    summaries_written: int = 0
    input_compactions: int = 0
    over_budget: int = 0
    facts_learned: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_error_type: str | None = None


@dataclass
class _Prepared:
    """What the first model call of a run decided: history split and the cached recall."""

    user_id: str
    session_id: str
    history_len: int
    """How many leading items of the first call's input are history replayed from the store."""
    result: RecallResult | None
    """``None`` when recall failed open."""
    created: float
    error_logged: bool = False
    summaries: list[MemoryRecord] = field(default_factory=list)
    """The session's summary records (only read when ``context_budget`` is set)."""
    summaries_gen: int = 0
    """The session's compaction generation ``summaries`` were read at."""
    seq_of: dict[int, int] = field(default_factory=dict)
    """Position among the first call's non-injected items -> stored turn seq (history only)."""
    agent_id: str | None = None
    """The explicit ``agent_id`` of the run (``None`` when not given)."""
    budget_logged: bool = False


@dataclass
class _RunState:
    """Per-run state of the hooks path, keyed by the run's ``Usage`` object (shared by every
    context wrapper the SDK derives for one run: agent, tool and LLM hook contexts)."""

    run_id: str
    prepared: _Prepared | None = None
    started: float = field(default_factory=time.monotonic)
    persisted: Counter[str] = field(default_factory=Counter)
    """Fingerprint -> occurrences of it this run already stored (or queued)."""
    next_pos: int = 0
    error_logged: bool = False
    texts: list[str] = field(default_factory=list)
    """Message texts of the run's new turns (for the optional fact extractor)."""


# -- item helpers --------------------------------------------------------------------------------


def _fingerprint(data: Mapping[str, Any]) -> str:
    """Identity of an item across its SDK shapes (output item, input item, session copy).

    Tool outputs are identified by their call id alone, so the output built at ``on_tool_end``
    and the SDK's own copy in the next model input are recognised as one item.
    """
    kind = str(data.get("type", "message"))
    call_id = data.get("call_id")
    if kind.endswith("_output") and isinstance(call_id, str):
        basis: list[Any] = [kind, call_id]
    else:
        basis = [kind, item_role(data), item_text(data), call_id]
    raw = json.dumps(basis, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _is_framed(item: Any) -> bool:
    """An item this package injected (recall memory, a compaction summary): never a turn."""
    if not isinstance(item, Mapping):
        return False
    content = item.get("content")
    return isinstance(content, str) and content.startswith(_FRAME)


def _insert_at(items: Sequence[Any], history_len: int) -> int:
    """Where the run's new input starts: after ``history_len`` items, injected ones skipped."""
    seen = 0
    for index, item in enumerate(items):
        if not _is_framed(item):
            if seen == history_len:
                return index
            seen += 1
    return len(items)


def _is_call(data: Mapping[str, Any]) -> bool:
    kind = str(data.get("type", ""))
    return kind.endswith("_call") and not kind.endswith("_output")


def _replayed_prefix(fps: Sequence[str], tail: Sequence[tuple[str, bool]]) -> int:
    """Length of the longest prefix of ``fps`` that replays the end of the stored ``tail``.

    ``tail`` is the newest stored turns of the session as ``(fingerprint, is_call)``, oldest first.
    A replayed history appears in the stored order, may skip stored items (a Session ``limit``
    replays only the newest; the SDK drops orphan tool calls) and always ends where the stored
    session ends, so the prefix's last item must be the newest stored item, trailing tool calls
    (orphans the SDK drops) aside. That end rule keeps a new "hi" from being taken for an old one.
    """
    end = len(tail)
    ends = []
    while end:
        ends.append(end)
        if not tail[end - 1][1]:
            break
        end -= 1
    for h in range(len(fps), 0, -1):
        for stop in ends:
            if fps[h - 1] != tail[stop - 1][0]:
                continue
            j = stop - 1
            for i in range(h - 2, -1, -1):
                j -= 1
                while j >= 0 and tail[j][0] != fps[i]:
                    j -= 1
                if j < 0:
                    break
            else:
                return h
    return 0


def _prefix_hashes(fps: Sequence[str]) -> list[str]:
    """``out[m]`` identifies ``fps[:m]`` (``out[0]`` is the empty prefix)."""
    out = [""]
    acc = hashlib.sha256()
    for fp in fps:
        acc.update(fp.encode())
        out.append(acc.copy().hexdigest()[:24])
    return out


_CacheKey: TypeAlias = "tuple[str, str, str, int, str]"


def _cache_key(base: tuple[str, str, str], length: int, prefix: str) -> _CacheKey:
    """(trace id, user, session, length of the run's first input, hash of that input)."""
    return (*base, length, prefix)


def _query_parts(items: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """The newest user message (the query) and the texts of the messages before it."""
    for i in range(len(items) - 1, -1, -1):
        if item_role(items[i]) == "user":
            before = [item_text(x) for x in items[:i] if item_role(x) in ("user", "assistant")][
                -_CONTEXT_ITEMS:
            ]
            return item_text(items[i]), before
    return "", []


def _sdk_version() -> tuple[int, int] | None:
    try:
        parts = version("openai-agents").split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return None


def _check_now(value: object) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ConfigError(f"clock must return a timezone-aware datetime, got {value!r}")
    return value


def _sensitive_default() -> bool:
    # The SDK's own default for RunConfig.trace_include_sensitive_data.
    val = os.getenv("OPENAI_AGENTS_TRACE_INCLUDE_SENSITIVE_DATA", "true")
    return val.strip().lower() in ("1", "true", "yes", "on")


def _discard(future: asyncio.Future[Any] | None) -> None:
    """Cancel ``future`` if still running, and mark its outcome as seen (no "never retrieved"
    warning for a result nobody needs any more)."""
    if future is None:
        return
    if not future.done():
        future.cancel()
        # A task may end with an error after all (it caught the cancellation, then failed).
        future.add_done_callback(_seen)
    else:
        _seen(future)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _agent_name(agent: Any) -> str | None:
    """The agent's ``name``, when it has a usable one (the speaker of what its model said)."""
    name = getattr(agent, "name", None)
    return name if isinstance(name, str) and name.strip() else None


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# -- the hooks -----------------------------------------------------------------------------------


class TiamatHooks(RunHooks[Any]):
    """Run hooks that give an agent memory of the user's past sessions. See the module docstring.

    Args:
        store: a :class:`~tiamat_hooks.stores.MemoryStore`, a store URL for
            :func:`~tiamat_hooks.stores.open_store` (the hooks then own and close it), or ``None``
            for the default store (``$TIAMAT_HOOKS_DB`` or the user data directory).
        user_id: whose memory: a string or a callable of the run context. Required.
        session_id: the conversation the run's turns belong to (string or callable); default
            ``"default"``. Use the SDK Session's id when you pass one to the Runner.
        agent_id: stored on turns and narrows recall when given; default: the agent's name on
            turns and no narrowing.
        top_k: most excerpts injected (``None``: the token budget decides).
        token_budget: most tokens of the injected block (default 1024, or
            ``recall_config.budget``). ``0`` disables recall.
        role: role of the injected message (``"user"``; ``"developer"``/``"system"`` if asked).
        inject_into_instructions: append memory to the instructions instead of the input (needs
            :attr:`input_filter`; the hooks alone cannot change instructions).
        strict: raise store errors into the run instead of failing open.
        hooks: your own :class:`agents.RunHooks`; every event is forwarded to it after this
            object has handled it (so your ``on_llm_start`` sees the injected memory).
        recall_config: recall knobs; ``top_k``/``token_budget`` override its fields when given.
        encoding: tiktoken encoding for counting tokens (default per :mod:`tiamat_hooks.tokens`).
        trace_include_sensitive_data: put queries and memory text on spans. ``None`` follows the
            SDK default; hooks cannot see your RunConfig, so pass the same value if you set it.
        persist: store the run's turns (default). ``False`` only recalls and injects: use it
            when something else already writes the turns to this store (a store-backed Session).
        context_budget: most tokens of the model input (history + new input + memory, counted
            with :func:`~tiamat_hooks.compaction.count_item_tokens`) before every model call;
            ``None`` (default) leaves the input as the SDK built it. See "Compaction" above.
        compact_after_tokens: after each run, summarize the oldest stored turns of the session
            once the turns no summary covers exceed this many tokens; ``None`` disables it.
            Keep it well below ``context_budget``: turns no summary covers yet can only be kept
            or trimmed.
        summarizer: what writes summaries: a :class:`~tiamat_hooks.compaction.Summarizer`,
            ``"model"`` for a :class:`~tiamat_hooks.compaction.ModelSummarizer` on the agent's
            own model, or ``None`` for the offline :class:`ExtractiveSummarizer`.
        facts: inject the user's current facts relevant to the message under "Known facts" in
            the memory block, within ``token_budget`` (a user without facts costs one read).
        fact_extractor: a :class:`~tiamat_hooks.facts.FactExtractor` run in the background
            after each run on its messages; triples are learned for the user. ``None``
            (default): no model extraction.
        user_name: who the user is, for the ``speaker`` of stored user messages (a string or
            a callable of the run context, like ``user_id``); ``None`` (default) stores none,
            and recall labels those turns ``user``. Assistant messages the model produced are
            always stored with the agent's ``name`` as ``speaker`` (after a handoff, the agent
            that answered). Recall quotes each turn under its speaker and lifts what a speaker
            named in the query said. It is a label for the model: ``user_id`` stays the scope.
        clock: what "now" is: a callable returning a timezone-aware ``datetime``, used as the
            time of stored turns and learned facts and as recall's "today" (date cues such as
            "last Tuesday" and the block's date line). Default: the UTC wall clock. Set it to
            replay or import past conversations at their original times, or in tests. It is
            called once by the constructor, to check what it returns.
        reranker: a :class:`~tiamat_hooks.rerank.Reranker` (such as
            :class:`~tiamat_hooks.rerank.CrossEncoderReranker`, extra ``tiamat-hooks[rerank]``)
            that re-scores recall's best candidates before packing; ``None`` (default): recall's
            own ranking. It runs once per run for the injected block, at the first model call
            (costing that call 0.15–0.5 s with the cross-encoder on two cores, README), and
            once per call of the ``search_memory`` tool. If it fails, recall keeps
            its own order (counted in ``stats.failures["rerank"]``; raised when ``strict``).

    Raises:
        ConfigError: an option is invalid (bad role, negative budget, missing ``user_id``,
            empty ``user_name``, a ``clock`` that does not return an aware ``datetime``).

    The constructor does no I/O.
    """

    def __init__(
        self,
        store: MemoryStore | str | None = None,
        *,
        user_id: IdSource,
        session_id: IdSource | None = None,
        agent_id: IdSource | None = None,
        top_k: int | None = None,
        token_budget: int | None = None,
        role: Literal["user", "developer", "system"] = "user",
        inject_into_instructions: bool = False,
        strict: bool = False,
        hooks: RunHooks[Any] | None = None,
        recall_config: RecallConfig | None = None,
        encoding: str | None = None,
        trace_include_sensitive_data: bool | None = None,
        persist: bool = True,
        context_budget: int | None = None,
        compact_after_tokens: int | None = 4000,
        summarizer: Summarizer | Literal["model"] | None = None,
        facts: bool = True,
        fact_extractor: FactExtractor | None = None,
        user_name: IdSource | None = None,
        clock: Callable[[], datetime] | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        if not (isinstance(user_id, str) or callable(user_id)):
            raise ConfigError("user_id must be a string or a callable of the run context")
        if not (
            user_name is None
            or (isinstance(user_name, str) and user_name.strip())
            or (callable(user_name) and not isinstance(user_name, str))
        ):
            raise ConfigError(
                f"user_name must be a non-empty string, a callable of the run context or None, "
                f"got {user_name!r}"
            )
        if role not in ("user", "developer", "system"):
            raise ConfigError(f"role must be 'user', 'developer' or 'system', got {role!r}")
        if clock is not None:
            if not callable(clock):
                raise ConfigError(f"clock must be a callable returning a datetime, got {clock!r}")
            _check_now(clock())
        for name, value in (
            ("token_budget", token_budget),
            ("top_k", top_k),
            ("context_budget", context_budget),
            ("compact_after_tokens", compact_after_tokens),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer or None, got {value!r}")
        if context_budget is not None and context_budget <= 0:
            raise ConfigError("context_budget must be a positive number of tokens or None")
        if compact_after_tokens is not None and compact_after_tokens < 8:
            raise ConfigError("compact_after_tokens must be at least 8 tokens, or None")
        if not (summarizer is None or summarizer == "model" or isinstance(summarizer, Summarizer)):
            raise ConfigError("summarizer must be a Summarizer, 'model' or None")
        check_reranker(reranker)
        if isinstance(store, (str, os.PathLike)):
            self.store: MemoryStore = open_store(os.fspath(store))
            self._owns_store = True
        elif store is None:
            self.store = open_store(None)
            self._owns_store = True
        elif isinstance(store, MemoryStore):
            self.store = store
            self._owns_store = False
        else:
            raise ConfigError(
                f"store must be a MemoryStore, a store URL or None, got {type(store).__name__}"
            )
        config = recall_config or RecallConfig()
        overrides: dict[str, Any] = {}
        if token_budget is not None:
            overrides["budget"] = token_budget
        elif recall_config is None:
            overrides["budget"] = DEFAULT_TOKEN_BUDGET
        if top_k is not None:
            overrides["top_k"] = top_k
        self.recall_config = dataclasses.replace(config, **overrides) if overrides else config
        self.user_id = user_id
        self.session_id = session_id
        self.agent_id = agent_id
        self.role = role
        self.inject_into_instructions = inject_into_instructions
        self.strict = strict
        self.persist = persist
        self.user_hooks = hooks
        self.encoding = encoding
        self.trace_include_sensitive_data = (
            _sensitive_default()
            if trace_include_sensitive_data is None
            else trace_include_sensitive_data
        )
        self.context_budget = context_budget
        self.compact_after_tokens = compact_after_tokens
        self.summarizer = summarizer
        self.facts = facts
        self.fact_extractor = fact_extractor
        self.user_name = user_name
        self.clock = clock
        self.reranker = reranker
        self.stats = HookStats()
        self._recaller: Recaller | None = None
        self._compactors: dict[int, Compactor] = {}
        self._compacting: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._compact_again: set[tuple[str, str]] = set()
        self._compaction_gen: Counter[tuple[str, str]] = Counter()
        self._filtered: OrderedDict[int, tuple[Any, list[Any]]] = OrderedDict()
        self._bg_logged: set[tuple[str, str, str]] = set()
        self._marker = f"<memory>\n{self.recall_config.header}"
        self._runs: dict[int, _RunState] = {}
        self._cache: OrderedDict[_CacheKey, _Prepared] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._errors: list[BaseException] = []
        self._sdk_warned = False
        self._instructions_warned = False
        self._rerank_warned = False

    # -- public API ------------------------------------------------------------------------------

    @property
    def recaller(self) -> Recaller:
        """The :class:`Recaller` used for every run (built on first use: loads the encoding)."""
        if self._recaller is None:
            counter = TokenCounter(self.encoding)
            self._recaller = Recaller(
                self.store,
                config=self.recall_config,
                counter=counter,
                reranker=self.reranker,
                on_rerank_error=self._rerank_failed,
            )
        return self._recaller

    def now(self) -> datetime:
        """The current time per ``clock`` (UTC wall clock by default)."""
        if self.clock is None:
            return utcnow()
        return _check_now(self.clock())

    @property
    def counter(self) -> TokenCounter:
        """The token counter of recall and ``context_budget`` (one encoding for both)."""
        return self.recaller.counter

    def compactor(self, agent: Agent[Any] | None = None) -> Compactor:
        """The :class:`Compactor` that writes summaries for runs of ``agent``.

        One compactor serves every agent unless ``summarizer="model"``, which gives each agent
        model its own. Thresholds derive from ``compact_after_tokens`` (``T``): spans of about
        ``T/2`` tokens, summaries of at most ``min(300, 0.15 * T/2)`` tokens, the newest ``T/4``
        tokens never summarized.

        Raises:
            ConfigError: ``compact_after_tokens`` is ``None`` (compaction is off).
        """
        if self.compact_after_tokens is None:
            raise ConfigError("compaction is off (compact_after_tokens=None)")
        summarizer: Summarizer
        if self.summarizer == "model":
            model = getattr(agent, "model", None)
            spec: Model | str | None = model if isinstance(model, (Model, str)) else None
            key = id(model) if isinstance(model, Model) else hash(("model", spec))
            if key not in self._compactors:
                summarizer = ModelSummarizer(spec, counter=self.counter)
        else:
            key = 0
            if key not in self._compactors:
                summarizer = self.summarizer or ExtractiveSummarizer(self.counter)
        if key not in self._compactors:
            after = self.compact_after_tokens
            span = max(2, after // 2)
            self._compactors[key] = Compactor(
                self.store,
                summarizer,
                compact_after_tokens=after,
                span_tokens=span,
                max_summary_tokens=max(1, min(300, span * 3 // 20)),
                keep_recent_tokens=after // 4,
                counter=self.counter,
            )
        return self._compactors[key]

    def _fp(self, data: Mapping[str, Any]) -> str:
        """Fingerprint of an incoming item in the form the store keeps it (redacted, if the
        store redacts), so it can be compared with stored turns."""
        redactor = getattr(self.store, "redactor", None)
        if redactor is not None and callable(getattr(redactor, "redact", None)):
            data = redact_json(dict(data), redactor)
        return _fingerprint(data)

    def _stored_fps(self, clean: Sequence[Mapping[str, Any]], fps: list[str]) -> list[str]:
        """:meth:`_fp` of each item; ``fps`` itself when the store keeps items unchanged."""
        if getattr(self.store, "redactor", None) is None:
            return fps
        return [self._fp(x) for x in clean]

    def tools(self, *, include_learn_fact: bool = True) -> list[FunctionTool]:
        """Memory function tools bound to each run's scope: ``search_memory(query)``,
        ``remember(fact)`` and (unless ``include_learn_fact=False``) ``learn_fact(subject,
        predicate, object)``. See :func:`~tiamat_hooks.tools.memory_tools`.

        The scope comes from the same ``user_id``/``agent_id``/``session_id`` sources as the
        hooks, resolved from the run context of each tool call; no tool takes a user id.
        """

        def scope_of(ctx: RunContextWrapper[Any]) -> Scope:
            user, session = self._ids(ctx)
            return Scope(user, agent_id=self._resolve(self.agent_id, ctx), session_id=session)

        return memory_tools(
            self.store,
            scope_of,
            recaller=self.recaller,
            counter=self.counter,
            include_learn_fact=include_learn_fact,
            clock=self.now,
        )

    async def input_filter(self, data: CallModelData[Any]) -> ModelInputData:
        """A ``RunConfig.call_model_input_filter`` that injects this run's memory.

        Returns a new :class:`ModelInputData`; the SDK's list is not modified. Input that already
        carries the memory item is returned as is. Recall runs on the first call of a run and is
        reused for the later calls of the same conversation (matched by the content of the
        run's original input). Store failures fail open unless ``strict``.

        With ``context_budget`` the returned input is also compacted (see the module
        docstring); memory injected into the instructions is not counted then.

        The filter only injects: storing the run's turns needs ``hooks=`` too. Without the hooks,
        two runs of one user under one trace that open with identical input within 10 minutes
        share one recall (the filter cannot tell runs apart; the hooks can, and do).
        """
        model_data = data.model_data
        if self._has_memory(model_data.input, model_data.instructions):
            return model_data
        ctx: RunContextWrapper[Any] = RunContextWrapper(context=data.context)
        prepared = await self._lookup_or_prepare(ctx, data.agent, model_data.input, None)
        items = list(model_data.input)
        instructions = model_data.instructions
        block = prepared.result.block if prepared.result is not None else ""
        changed = False
        if block:
            if self.inject_into_instructions:
                instructions = f"{instructions}\n\n{block}" if instructions else block
            else:
                items.insert(_insert_at(items, prepared.history_len), self._memory_item(block))
                changed = True
            self.stats.injections += 1
        compacted = await self._fit(prepared, items, None)
        if compacted is not None and compacted.changed:
            items = compacted.items
            changed = True
        if changed:
            # on_llm_start receives this list; let it find the input the filter was given.
            self._remember_filtered(items, list(model_data.input))
        return ModelInputData(input=items, instructions=instructions)

    @overload
    def wrap(self, target: RunConfig | None = None) -> RunConfig: ...

    @overload
    def wrap(self, target: InputFilter) -> InputFilter: ...

    def wrap(self, target: RunConfig | InputFilter | None = None) -> RunConfig | InputFilter:
        """Compose :attr:`input_filter` with what you already have.

        * ``None``: a new ``RunConfig(call_model_input_filter=hooks.input_filter)``.
        * a ``RunConfig``: a copy whose filter runs yours first, then injects memory.
        * a filter: a filter that runs yours first, then injects memory.

        Your filter runs *before* injection, on the SDK's input: it sees the plain conversation
        (trim it, redact it) and cannot drop or reorder the memory item, whose size is bounded by
        ``token_budget`` on top of whatever your filter keeps.
        """
        if target is None:
            return RunConfig(call_model_input_filter=self.input_filter)
        if isinstance(target, RunConfig):
            inner = target.call_model_input_filter
            composed = self.input_filter if inner is None else self._compose(inner)
            return dataclasses.replace(target, call_model_input_filter=composed)
        if callable(target):
            return self._compose(target)
        raise ConfigError("wrap() takes a RunConfig, a call_model_input_filter or None")

    async def flush(self) -> None:
        """Wait until every write scheduled so far has finished (stored or failed).

        Raises the first error a background write raised that was not a fail-open store error;
        fail-open failures are counted in :attr:`stats`. Writes queued on another event loop
        (``Runner.run_sync``'s) are left to :meth:`flush_sync`.
        """
        loop = asyncio.get_running_loop()
        while mine := [t for t in self._tasks if t.get_loop() is loop]:
            await asyncio.gather(*mine, return_exceptions=True)
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]

    def flush_sync(self) -> None:
        """:meth:`flush` for synchronous code, e.g. after ``Runner.run_sync``.

        ``run_sync`` leaves its event loop open but stopped, so writes still queued on it would
        only run during the next ``run_sync``; this runs that loop until they are done.

        Raises:
            RuntimeError: called while an event loop is running in this thread (``await
                flush()`` there).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("flush_sync() cannot run inside an event loop; await flush()")
        loops = {task.get_loop() for task in self._tasks}
        for loop in loops:
            if not loop.is_closed():
                loop.run_until_complete(self.flush())
        if not loops and self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]

    async def close(self) -> None:
        """Flush, then close the store if these hooks opened it from a URL."""
        try:
            await self.flush()
        finally:
            if self._owns_store:
                await self.store.close()

    async def __aenter__(self) -> TiamatHooks:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> TiamatHooks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush_sync()

    # -- RunHooks --------------------------------------------------------------------------------

    async def on_agent_start(self, context: Any, agent: Any) -> None:
        _, created = self._run_state(context)
        if created:
            # A new run: a filter-side recall cached for the same opening by an earlier run is
            # stale now (that run may have stored new memory).
            self._evict(context, agent, context.turn_input)
        if self.user_hooks is not None:
            await self.user_hooks.on_agent_start(context, agent)

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        state, _ = self._run_state(context)
        # When our filter changed this list, history detection and persistence must look at
        # the input the filter was given (compaction may have removed items from this one).
        original = self._filter_source(input_items)
        source = input_items if original is None else original
        if state.prepared is None:
            state.prepared = await self._lookup_or_prepare(context, agent, source, state)
        prepared = state.prepared
        fresh = self._new_inputs(state, source)
        block = prepared.result.block if prepared.result is not None else ""
        if original is None and block and not self._has_memory(input_items, system_prompt):
            if self.inject_into_instructions and not self._instructions_warned:
                self._instructions_warned = True
                logger.warning(
                    "inject_into_instructions needs run_config=hooks.wrap(...): hooks cannot "
                    "change instructions, so memory was injected as an input item instead"
                )
            self._warn_if_unverified_sdk()
            # 0.24 passes the list it sends to the model: inserting here reaches the model.
            input_items.insert(
                _insert_at(input_items, prepared.history_len), self._memory_item(block)
            )
            self.stats.injections += 1
        if original is None:
            compacted = await self._fit(prepared, input_items, state)
            if compacted is not None and compacted.changed:
                input_items[:] = compacted.items  # in place: this list is what the model gets
        await self._persist(state, context, agent, fresh)
        if self.user_hooks is not None:
            await self.user_hooks.on_llm_start(context, agent, system_prompt, input_items)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        state, _ = self._run_state(context)
        if state.prepared is not None:
            fresh = []
            for out in response.output:
                data = to_jsonable(out)
                fp = _fingerprint(data)
                state.persisted[fp] += 1
                fresh.append(data)
            await self._persist(state, context, agent, fresh, from_model=True)
        if self.user_hooks is not None:
            await self.user_hooks.on_llm_end(context, agent, response)

    async def on_tool_start(self, context: RunContextWrapper[Any], agent: Any, tool: Tool) -> None:
        if self.user_hooks is not None:
            await self.user_hooks.on_tool_start(context, agent, tool)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Any, tool: Tool, result: object
    ) -> None:
        # Stored now rather than from the next model input: a run may end on a tool result
        # (tool_use_behavior="stop_on_first_tool") or fail before another model call.
        call_id = getattr(context, "tool_call_id", None)
        state, _ = self._run_state(context)
        if isinstance(call_id, str) and state.prepared is not None:
            data = {
                "type": "function_call_output",
                "call_id": call_id,
                "output": result if isinstance(result, str) else str(result),
            }
            fp = _fingerprint(data)
            if state.persisted[fp] == 0:
                state.persisted[fp] += 1
                await self._persist(state, context, agent, [data])
        if self.user_hooks is not None:
            await self.user_hooks.on_tool_end(context, agent, tool, result)

    async def on_handoff(
        self, context: RunContextWrapper[Any], from_agent: Any, to_agent: Any
    ) -> None:
        if self.user_hooks is not None:
            await self.user_hooks.on_handoff(context, from_agent, to_agent)

    async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
        state, _ = self._run_state(context)
        prepared = state.prepared
        # A run whose recall failed open found the store down: leave background work to the
        # next run rather than fail twice.
        if prepared is not None and prepared.result is not None:
            # The run's turns are queued by now; compaction and extraction chain after them.
            if self.compact_after_tokens is not None:
                self._schedule_compaction(prepared, agent)
            if self.fact_extractor is not None and state.texts:
                self._background(self._extract_facts(prepared, state.texts, agent))
        if self.user_hooks is not None:
            await self.user_hooks.on_agent_end(context, agent, output)

    # -- scope -----------------------------------------------------------------------------------

    def _resolve(self, source: IdSource | None, ctx: RunContextWrapper[Any]) -> str | None:
        if source is None:
            return None
        value = source if isinstance(source, str) else source(ctx)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"an id callable returned {value!r}; expected a non-empty string")
        return value

    def _ids(self, ctx: RunContextWrapper[Any]) -> tuple[str, str]:
        user = self._resolve(self.user_id, ctx)
        assert user is not None  # user_id is required by the constructor
        session = self._resolve(self.session_id, ctx) or DEFAULT_SESSION_ID
        Scope(user, session_id=session)  # validates both ids (raises InvalidScopeError)
        return user, session

    # -- run state -------------------------------------------------------------------------------

    def _run_state(self, ctx: RunContextWrapper[Any]) -> tuple[_RunState, bool]:
        # Every wrapper the SDK derives within one run shares the run's Usage object; contextvars
        # do not work here because the SDK runs hooks in child tasks.
        usage = ctx.usage
        key = id(usage)
        state = self._runs.get(key)
        if state is not None:
            return state, False
        state = _RunState(run_id=new_id())
        self._runs[key] = state
        weakref.finalize(usage, self._runs.pop, key, None)
        return state, True

    def _cache_key_base(self, user: str, session: str) -> tuple[str, str, str]:
        trace = get_current_trace()
        trace_id = trace.trace_id if trace is not None and trace.trace_id != "no-op" else ""
        return trace_id, user, session

    def _evict(self, ctx: RunContextWrapper[Any], agent: Any, turn_input: Sequence[Any]) -> None:
        user, session = self._ids(ctx)
        base = self._cache_key_base(user, session)
        # Every entry of this session under this trace: with an SDK Session a later run's input
        # starts with an earlier run's, so a prefix match would hand it that run's recall (runs
        # share a trace id when tracing is disabled or one trace() wraps several runs).
        for key in [k for k in self._cache if k[:3] == base]:
            del self._cache[key]

    async def _lookup_or_prepare(
        self,
        ctx: RunContextWrapper[Any],
        agent: Agent[Any],
        items: Sequence[Any],
        state: _RunState | None,
    ) -> _Prepared:
        user, session = self._ids(ctx)
        clean = [to_jsonable(x) for x in items if not _is_framed(x)]
        fps = [_fingerprint(x) for x in clean]
        prefixes = _prefix_hashes(fps)
        base = self._cache_key_base(user, session)
        now = time.monotonic()
        # The filter runs before on_llm_start: on the first call both must agree on one recall.
        # Later calls of a run carry the run's original input as a prefix of their input.
        # The hooks ask once per run, on its first call: only this very input, prepared (by the
        # filter) since the run started, is theirs.
        shortest = 1 if state is None else len(fps)
        for m in range(len(fps), shortest - 1, -1):
            hit = self._cache.get(_cache_key(base, m, prefixes[m]))
            if state is not None and hit is not None and hit.created < state.started:
                continue
            if hit is not None and now - hit.created < _CACHE_TTL:
                self._cache.move_to_end(_cache_key(base, m, prefixes[m]))
                return hit
        prepared = await self._prepare(ctx, agent, user, session, clean, fps, state)
        self._cache[_cache_key(base, len(fps), prefixes[-1])] = prepared
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return prepared

    async def _prepare(
        self,
        ctx: RunContextWrapper[Any],
        agent: Agent[Any],
        user: str,
        session: str,
        clean: list[dict[str, Any]],
        fps: list[str],
        state: _RunState | None,
    ) -> _Prepared:
        """Split replayed history from new input and recall, once per run."""
        prepared = _Prepared(user, session, 0, None, time.monotonic())
        prepared.agent_id = self._resolve(self.agent_id, ctx)
        # Writes of an earlier run of this session must land before its tail is read.
        pending = self._tails.get((user, session))
        if pending is not None and not pending.done():
            await asyncio.wait([pending])
        explicit_agent = prepared.agent_id
        started = time.perf_counter()
        message, context = _query_parts(clean)
        recall_scope = Scope(user, agent_id=explicit_agent)
        searched: asyncio.Future[list[SearchHit]] | None = None
        facts_read: asyncio.Future[list[str]] | None = None
        with custom_span("tiamat.recall", data={"user_items": len(clean)}) as span:
            try:
                if self.recall_config.budget > 0:
                    # Neither the search nor the facts depend on the session's tail (exclusions
                    # apply to the hits afterwards): sent now, they are on their way while the
                    # tail is read and recall's budget planned — in parallel on a store with a
                    # connection pool or over HTTP, queued right behind the tail read on the
                    # embedded store's one SQLite thread. Unused (a wasted search) if the
                    # budget left for recall turns out to be 0 or the tail read fails.
                    searched = asyncio.ensure_future(
                        self.recaller.search(recall_scope, message, context=context)
                    )
                    if self.facts:
                        facts_read = asyncio.ensure_future(
                            relevant_fact_lines(
                                self.store,
                                recall_scope,
                                self.recaller.build_query(message, context),
                                limit=_FACT_LINES,
                            )
                        )
                tail = await self.store.read(
                    Scope(user, session_id=session),
                    kinds=("turn",),
                    limit=len(clean) + _TAIL_SLACK,
                    newest=True,
                )
                tail_fps = [
                    (_fingerprint(r.item or {}), _is_call(r.item or {})) if r.item else ("", False)
                    for r in tail
                ]
                # Stored turns hold what the store kept (redacted, if it redacts): match the
                # input in that form. Done once per run; cache keys use the raw fingerprints.
                stored_fps = self._stored_fps(clean, fps)
                prepared.history_len = _replayed_prefix(stored_fps, tail_fps)
                visible = set(stored_fps)
                exclude: set[str] = set()
                budget = self.recall_config.budget
                if self.context_budget is not None:
                    key = (user, session)
                    prepared.summaries_gen = self._compaction_gen[key]
                    prepared.summaries = await self._read_summaries(key, explicit_agent)
                    history = clean[: prepared.history_len]
                    prepared.seq_of = seq_map_from_history(history, tail) if history else {}
                    # The session's summaries reach the model through compaction, not recall.
                    exclude.update(s.id for s in prepared.summaries)
                    budget, visible = self._plan_recall(prepared, clean, budget)
                exclude.update(
                    r.id for r, (fp, _) in zip(tail, tail_fps, strict=True) if fp in visible
                )
                facts: list[str] = []
                hits: list[SearchHit] | None = None
                if budget > 0:
                    if searched is not None:
                        hits = await searched
                    if facts_read is not None:
                        facts = await facts_read
                result = await self.recaller.recall(
                    recall_scope,
                    message,
                    context=context,
                    now=self.now(),
                    exclude_ids=exclude,
                    budget=budget,
                    facts=facts,
                    hits=hits,
                )
            except StoreError as exc:
                span.span_data.data["error"] = type(exc).__name__
                self._failed("recall", exc, state, prepared)
                return prepared
            finally:
                _discard(searched)
                _discard(facts_read)
            prepared.result = result
            self.stats.recalls += 1
            data = span.span_data.data
            data.update(
                history_items=prepared.history_len,
                candidates=result.candidates,
                snippets=len(result.snippets),
                tokens=result.tokens,
                budget=budget,
                facts=len(facts),
                elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            if self.trace_include_sensitive_data:
                data.update(query=result.query, block=result.block)
        return prepared

    # -- compaction ------------------------------------------------------------------------------

    async def _read_summaries(
        self, key: tuple[str, str], agent_id: str | None
    ) -> list[MemoryRecord]:
        user, session = key
        scope = Scope(user, agent_id=agent_id, session_id=session)
        return await self.store.read(scope, kinds=("summary",))

    def _plan_recall(
        self, prepared: _Prepared, clean: list[dict[str, Any]], budget: int
    ) -> tuple[int, set[str]]:
        """Recall's budget inside ``context_budget``, and the fingerprints that stay visible.

        Compacting the conversation alone into what the memory item leaves shows which history
        items the model will still see verbatim; only those are kept out of recall, so turns
        that compaction removes can come back through recall when they matter. When even the
        protected items leave less than ``budget``, recall gets what is left.
        """
        assert self.context_budget is not None
        reserve = budget + ITEM_OVERHEAD_TOKENS
        pre = compact_input(
            clean,
            prepared.summaries,
            context_budget=max(0, self.context_budget - reserve),
            seq_of=prepared.seq_of,
            counter=self.counter,
        )
        visible = {self._fp(to_jsonable(x)) for x in pre.items if not _is_framed(x)}
        if not pre.fits:
            budget = max(0, self.context_budget - pre.tokens_after - ITEM_OVERHEAD_TOKENS)
        return budget, visible

    async def _fit(
        self, prepared: _Prepared, items: list[Any], state: _RunState | None
    ) -> CompactedInput | None:
        """``items`` (memory already injected) compacted to ``context_budget``; ``None`` if off.

        The one compaction used by both the filter and ``on_llm_start``. Injected items (memory,
        summaries) are pinned; history items map to stored seqs through ``prepared.seq_of``, so
        only they can be replaced by a summary; everything else can only be kept or trimmed.
        """
        if self.context_budget is None:
            return None
        key = (prepared.user_id, prepared.session_id)
        if prepared.summaries_gen != self._compaction_gen[key]:
            # A background compaction finished since: newer summaries may cover more history.
            gen = self._compaction_gen[key]
            try:
                prepared.summaries = await self._read_summaries(key, prepared.agent_id)
            except StoreError as exc:
                self._failed("recall", exc, state, prepared)
            prepared.summaries_gen = gen
        pinned: list[int] = []
        seq_of: dict[int, int] = {}
        position = 0
        for i, item in enumerate(items):
            if _is_framed(item):
                pinned.append(i)
                continue
            seq = prepared.seq_of.get(position)
            if seq is not None and position < prepared.history_len:
                seq_of[i] = seq
            position += 1
        result = compact_input(
            items,
            prepared.summaries,
            context_budget=self.context_budget,
            seq_of=seq_of,
            counter=self.counter,
            pinned=pinned,
        )
        if result.changed:
            self.stats.input_compactions += 1
        if not result.fits:
            self.stats.over_budget += 1
            if not prepared.budget_logged:
                prepared.budget_logged = True
                logger.warning(
                    "tiamat-hooks: model input of %d tokens exceeds context_budget=%d even "
                    "after compaction (memory, the request and this run's tool calls are kept); "
                    "sent as is (logged once per run, counted in hooks.stats.over_budget)",
                    result.tokens_after,
                    self.context_budget,
                )
        return result

    def _remember_filtered(self, items: Sequence[Any], original: list[Any]) -> None:
        for item in items:
            if _is_framed(item):
                # The item is kept alive in the value, so its id cannot be reused meanwhile.
                self._filtered[id(item)] = (item, original)
        while len(self._filtered) > _FILTERED_SIZE:
            self._filtered.popitem(last=False)

    def _filter_source(self, items: Sequence[Any]) -> list[Any] | None:
        """The input our filter was given, if it produced ``items``; else ``None``."""
        for item in items:
            hit = self._filtered.get(id(item)) if _is_framed(item) else None
            if hit is not None and hit[0] is item:
                return hit[1]
        return None

    def _background(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _schedule_compaction(self, prepared: _Prepared, agent: Any) -> None:
        """Compact the session in the background, at most one compaction per session at once.

        A request while one runs marks the session; the running compaction then goes round
        once more (it may have read the session before this run's turns landed).
        """
        key = (prepared.user_id, prepared.session_id)
        running = self._compacting.get(key)
        if running is not None and not running.done():
            self._compact_again.add(key)
            return
        task = self._background(self._compact_session(key, agent, prepared.agent_id))
        self._compacting[key] = task

    async def _compact_session(
        self, key: tuple[str, str], agent: Any, explicit_agent: str | None
    ) -> None:
        compactor = self.compactor(agent)
        while True:
            self._compact_again.discard(key)
            # Chained after the session's writes, never the other way round: runs do not wait.
            pending = self._tails.get(key)
            if pending is not None and not pending.done():
                await asyncio.wait([pending])
            started = time.perf_counter()
            with custom_span("tiamat.compact", data={}) as span:
                try:
                    written = await compactor.compact(
                        Scope(key[0], agent_id=explicit_agent, session_id=key[1])
                    )
                except (SummarizationError, StoreError) as exc:
                    span.span_data.data["error"] = type(exc).__name__
                    self._background_failed("compact", key, exc)
                    return
                self.stats.compactions += 1
                self.stats.summaries_written += len(written)
                if written:
                    self._compaction_gen[key] += 1
                span.span_data.data.update(
                    summaries=len(written),
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            if key not in self._compact_again:
                return

    async def _extract_facts(self, prepared: _Prepared, texts: list[str], agent: Any) -> None:
        extractor = self.fact_extractor
        assert extractor is not None
        key = (prepared.user_id, prepared.session_id)
        scope = Scope(key[0], agent_id=prepared.agent_id, session_id=key[1])
        try:
            triples = await extractor.extract("\n".join(texts))
            for t in triples:
                await learn(
                    self.store,
                    scope,
                    t.subject,
                    t.predicate,
                    t.object,
                    confidence=t.confidence,
                    valid_from=self.now(),
                )
                self.stats.facts_learned += 1
        except Exception as exc:  # a model or store failure: counted, never raised into a run
            self._background_failed("facts", key, exc)

    def _count_failure(self, operation: str, exc: BaseException) -> None:
        """Count a failure of ``operation`` in ``stats``; re-raise it when ``strict``."""
        self.stats.failures[operation] = self.stats.failures.get(operation, 0) + 1
        self.stats.last_error_type = type(exc).__name__
        if self.strict:
            raise exc

    def _rerank_failed(self, exc: Exception) -> None:
        """Recall kept its own order: counted as a ``"rerank"`` failure, raised when strict."""
        self._count_failure("rerank", exc)
        if not self._rerank_warned:
            self._rerank_warned = True
            logger.warning(
                "tiamat-hooks: reranking failed (%s: %s); recall keeps its own order (logged "
                "once, counted in hooks.stats)",
                type(exc).__name__,
                exc,
            )

    def _background_failed(self, operation: str, key: tuple[str, str], exc: BaseException) -> None:
        self._count_failure(operation, exc)  # when strict, surfaces from flush()
        if (operation, *key) not in self._bg_logged:
            self._bg_logged.add((operation, *key))
            logger.warning(
                "tiamat-hooks: background %s of session %r failed (%s: %s); the raw turns are "
                "kept (logged once per session, counted in hooks.stats)",
                operation,
                key[1],
                type(exc).__name__,
                exc,
            )

    # -- injection -------------------------------------------------------------------------------

    def _memory_item(self, block: str) -> TResponseInputItem:
        # A fresh dict per call: the SDK and user filters may keep or mutate what they receive.
        item: dict[str, Any] = {"type": "message", "role": self.role, "content": block}
        return item  # type: ignore[return-value]

    def _is_ours(self, item: Any) -> bool:
        """The memory item these hooks (or their filter) injected."""
        return _is_framed(item) and str(item.get("content")).startswith(self._marker)

    def _has_memory(self, items: Sequence[Any], instructions: str | None) -> bool:
        if instructions and self._marker in instructions:
            return True
        return any(self._is_ours(x) for x in items)

    def _compose(self, inner: InputFilter) -> InputFilter:
        async def composed(data: CallModelData[Any]) -> ModelInputData:
            updated = await _maybe_await(inner(data))
            if not isinstance(updated, ModelInputData):
                # Same contract the SDK enforces on the filter it is given.
                raise TypeError("call_model_input_filter must return a ModelInputData instance")
            return await self.input_filter(dataclasses.replace(data, model_data=updated))

        return composed

    def _warn_if_unverified_sdk(self) -> None:
        if self._sdk_warned:
            return
        self._sdk_warned = True
        if _sdk_version() != _VERIFIED_SDK:
            logger.warning(
                "tiamat-hooks injects memory from on_llm_start, verified on openai-agents %s.%s "
                "only; if memory does not reach the model, pass run_config=hooks.wrap() "
                "(RunConfig(call_model_input_filter=hooks.input_filter))",
                *_VERIFIED_SDK,
            )

    # -- persistence -----------------------------------------------------------------------------

    def _new_inputs(self, state: _RunState, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Items of this call's input that are new in this run and not yet stored."""
        prepared = state.prepared
        assert prepared is not None
        clean = [to_jsonable(x) for x in items if not _is_framed(x)]
        seen: Counter[str] = Counter()
        fresh = []
        for data in clean[prepared.history_len :]:
            fp = _fingerprint(data)
            seen[fp] += 1
            if seen[fp] > state.persisted[fp]:
                state.persisted[fp] += 1
                fresh.append(data)
        return fresh

    async def _persist(
        self,
        state: _RunState,
        ctx: RunContextWrapper[Any],
        agent: Any,
        items: list[dict[str, Any]],
        *,
        from_model: bool = False,
    ) -> None:
        """Queue ``items`` as turn records. ``from_model``: the items are ``agent``'s output, so
        its assistant messages carry the agent's name as ``meta["speaker"]``."""
        prepared = state.prepared
        if not items or prepared is None or not self.persist:
            return
        agent_id = self._resolve(self.agent_id, ctx) or _agent_name(agent)
        speakers = {
            "user": self._resolve(self.user_name, ctx),
            "assistant": _agent_name(agent) if from_model else None,
        }
        metas = []
        for data in items:
            meta: dict[str, Any] = {"run_id": state.run_id}
            speaker = speakers.get(item_role(data))  # messages only: other items are "tool"
            if speaker is not None:
                meta["speaker"] = speaker
            metas.append(meta)
        if self.fact_extractor is not None:
            state.texts.extend(
                f"{m.get('speaker') or item_role(d)}: {item_text(d)}"
                for d, m in zip(items, metas, strict=True)
                if item_role(d) in ("user", "assistant")
            )
        records = []
        now = self.now()
        for data, meta in zip(items, metas, strict=True):
            records.append(
                item_to_record(
                    data,
                    user_id=prepared.user_id,
                    session_id=prepared.session_id,
                    agent_id=agent_id,
                    created_at=now,
                    key=f"{state.run_id}:{state.next_pos}",
                    meta=meta,
                )
            )
            state.next_pos += 1
        if self.strict:
            await self._write(None, records, state)
            return
        scope = (prepared.user_id, prepared.session_id)
        # Chained per session so the store assigns sequence numbers in conversation order.
        task = asyncio.get_running_loop().create_task(
            self._write(self._tails.get(scope), records, state)
        )
        self._tails[scope] = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        for scope, tail in list(self._tails.items()):
            if tail is task:
                del self._tails[scope]
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._errors.append(exc)

    async def _write(
        self,
        previous: asyncio.Task[None] | None,
        records: list[MemoryRecord],
        state: _RunState,
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        started = time.perf_counter()
        with custom_span("tiamat.persist", data={"records": len(records)}) as span:
            try:
                stored = await self.store.add(records)
            except StoreError as exc:
                span.span_data.data["error"] = type(exc).__name__
                self._failed("persist", exc, state, None)
                return
            self.stats.records_persisted += len(stored)
            span.span_data.data["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)

    def _failed(
        self,
        operation: str,
        exc: StoreError,
        state: _RunState | None,
        prepared: _Prepared | None,
    ) -> None:
        self._count_failure(operation, exc)
        holder: Any = state if state is not None else prepared
        if holder is not None and not holder.error_logged:
            holder.error_logged = True
            logger.warning(
                "tiamat-hooks: memory %s failed (%s: %s); the run continues without it "
                "(logged once per run, counted in hooks.stats)",
                operation,
                type(exc).__name__,
                exc,
            )
