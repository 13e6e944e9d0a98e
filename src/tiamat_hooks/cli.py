"""The ``tiamat-hooks`` command line: a thin layer over the public objects.

Every command catches :class:`~tiamat_hooks.errors.TiamatError` once, prints
``ErrorType: message`` to stderr and exits with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import InvalidInputError, TiamatError
from .models import MemoryRecord, Scope, make_record
from .stores import MemoryStore, default_store_url, open_store

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
) -> None:
    """Recall memory for USER as the input filter would, and print the block."""
    from .recall import RecallConfig, Recaller

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
        result = await Recaller(s, config=RecallConfig(budget=budget)).recall(Scope(user), query)
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
    """Delete everything stored for USER: turns, summaries, facts."""
    if not yes and not typer.confirm(f"Delete all memory of user {user!r}?"):
        raise typer.Exit(1)

    async def go(s: MemoryStore) -> None:
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


@bench_app.command("recall")
def bench_recall(
    file: Annotated[Path, typer.Argument(help="A memory-recall-bench/1 file (.json or .json.gz).")],
    budget: Annotated[str, typer.Option(help="Token budgets, comma separated.")] = "512,1024,2048",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG chart of recall by budget.")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Store URL (default: a fresh in-memory SQLite store per conversation)."),
    ] = None,
) -> None:
    """Evidence recall within token budgets, scored as the dataset's README says."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .bench.dataset import load_dataset
    from .bench.recall import run_recall_bench

    budgets = _budgets(budget)

    async def go() -> None:
        data = load_dataset(file)
        total = sum(len(c.questions) for c in data.conversations)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task(data.name, total=total)
            report = await run_recall_bench(
                data,
                budgets=budgets,
                store_url=store,
                progress=lambda n: bar.advance(task, n),
            )
        cats = [k for k in report.results[0].recall if k != "overall"]
        table = Table(title=f"{report.dataset}: evidence recall ({report.questions} questions)")
        table.add_column("category")
        for r in report.results:
            table.add_column(f"@{r.budget}", justify="right")
        for cat in ["overall", *cats]:
            table.add_row(cat, *(f"{r.recall[cat]:.3f}" for r in report.results))
        table.add_row(
            "tokens mean / max", *(f"{r.tokens_mean:.0f} / {r.tokens_max}" for r in report.results)
        )
        table.add_row(
            "latency p50 / p95 ms",
            *(f"{r.latency_ms['p50']:.1f} / {r.latency_ms['p95']:.1f}" for r in report.results),
        )
        console.print(table)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        if plot is not None:
            from .bench.plots import plot_recall

            plot_recall(report, plot)

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
        str, typer.Option(help="Store URL to grow and measure (use a scratch database).")
    ] = "sqlite:///bench-out/latency.db",
    sizes: Annotated[str, typer.Option(help="Checkpoint sizes in stored turns.")] = (
        "10000,100000,1000000"
    ),
    users: Annotated[int, typer.Option(help="Users the turns are spread over.")] = 100,
    queries: Annotated[int, typer.Option(help="Recalls measured at each checkpoint.")] = 200,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG latency chart.")] = None,
) -> None:
    """Recall p50/p95 and persist throughput as the store grows to each size."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .bench.latency import run_latency_bench

    checkpoints = _budgets(sizes)

    async def go() -> None:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task("turns written", total=max(checkpoints))
            report = await run_latency_bench(
                store,
                sizes=checkpoints,
                users=users,
                queries=queries,
                progress=lambda n: bar.advance(task, n),
            )
        table = Table(title=f"latency: {report.store} ({report.users} users)")
        for col in ("stored turns", "persist turns/s", "search p50/p95 ms", "recall p50/p95 ms"):
            table.add_column(col, justify="right")
        for p in report.points:
            table.add_row(
                f"{p.turns:,}",
                f"{p.persist_turns_per_s:,.0f}",
                f"{p.search_ms['p50']:.2f} / {p.search_ms['p95']:.2f}",
                f"{p.recall_ms['p50']:.2f} / {p.recall_ms['p95']:.2f}",
            )
        console.print(table)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        if plot is not None:
            from .bench.plots import plot_latency

            plot_latency([report], plot)

    _run(go())


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
