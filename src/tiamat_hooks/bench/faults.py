"""Fault injection: agent runs keep working and lose no write while the memory service misbehaves.

``N`` runs of ``Runner.run`` with :class:`~tiamat_hooks.hooks.TiamatHooks` on a
:class:`~tiamat_hooks.stores.cloud.TiamatCloudStore` (``ScriptedModel`` as the model) while the
service answers 5xx, times out, resets connections and, in ``server`` mode, is killed with
``SIGKILL`` and restarted on the same port and store file. Afterwards faults stop, the outbox is
flushed, and every turn the runs produced (each user message and each answer is unique) is
looked up on the server. Figures: ``runs_failed`` (runs that raised: must be 0), ``lost``
(turns not on the server after the replay: must be 0), ``duplicates``, ``persist_failures``
(writes the hooks dropped), faults injected by kind, ``restarts``.

Two modes:

* ``"server"``: the real ``tiamat-hooks serve`` in a subprocess on loopback behind a small
  asyncio TCP proxy (:class:`FaultProxy`) that resets, stalls (client timeout), delays or answers
  503 per connection; every ``restart_every`` runs the server process is SIGKILLed and restarted.
* ``"respx"``: the server app in process behind a respx router whose side effect raises connect
  errors and timeouts, answers 500/502/503/429, or forwards to the app.

Nothing here is part of the product server: the faults live in this module only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from ..models import Scope

__all__ = ["FaultProxy", "FaultReport", "run_fault_bench"]

FaultMode = Literal["server", "respx"]

_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
KEY = "fault-bench-key"


@dataclass
class FaultReport:
    """Figures of one fault run (see the module docstring)."""

    mode: str
    runs: int
    runs_failed: int = 0
    expected_turns: int = 0
    lost: int = 0
    duplicates: int = 0
    persist_failures: int = 0
    queued_after_replay: int = 0
    restarts: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    writes_queued: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.runs_failed and not self.lost and not self.queued_after_replay

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- a misbehaving loopback TCP proxy ----------------------------------------------------------

_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\n"
    b'{"error":"injected"}\n'
)


class FaultProxy:
    """Forwards loopback TCP connections to ``target_port``, injecting a fault on a share of them.

    Per new connection, with probability ``rate``: ``reset`` (closed at once), ``stall`` (read,
    never answered: the client times out), ``delay`` (forwarded after 0.05–0.3 s) or ``503``
    (answered by the proxy). ``enabled = False`` forwards everything.
    """

    def __init__(self, target_port: int, *, rate: float, seed: int = 0) -> None:
        self.target_port = target_port
        self.rate = rate
        self.enabled = True
        self.faults: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = None
        if self.enabled and self._rng.random() < self.rate:
            fault = self._rng.choice(["reset", "stall", "delay", "503"])
            self.faults[fault] += 1
        try:
            if fault == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:  # RST instead of FIN: a connection reset by peer
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                return
            if fault == "stall":
                await asyncio.wait_for(reader.read(65536), 5)
                await asyncio.sleep(3)  # longer than the client's timeout
                return
            if fault == "503":
                await asyncio.wait_for(reader.read(65536), 5)
                writer.write(_503)
                await writer.drain()
                return
            if fault == "delay":
                await asyncio.sleep(0.05 + self._rng.random() * 0.25)
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return  # the server is down (being restarted): the client sees a reset
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.close()


# -- the server subprocess ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _ServerProcess:
    """``tiamat-hooks serve`` on a fixed loopback port and store file; SIGKILL and restart."""

    def __init__(self, db: Path, port: int) -> None:
        self.db, self.port = db, port
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tiamat_hooks.cli",
                "serve",
                "--store",
                f"sqlite:///{self.db}",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dev-key",
                KEY,
                "--log-level",
                "info",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        ready = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # keep draining so the server never blocks on the pipe
                if _RUNNING.search(line):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or proc.poll() is not None:
            raise RuntimeError("tiamat-hooks serve did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


# -- respx faults ----------------------------------------------------------------------------


def _respx_transport(app: Any, rate: float, rng: random.Random, faults: Counter[str]) -> Any:
    import respx

    asgi = httpx.ASGITransport(app=app)
    state = {"enabled": True}

    async def side_effect(request: httpx.Request) -> httpx.Response:
        if state["enabled"] and rng.random() < rate:
            kind = rng.choice(["connect", "timeout", "500", "502", "503", "429"])
            faults[kind] += 1
            if kind == "connect":
                raise httpx.ConnectError("injected", request=request)
            if kind == "timeout":
                raise httpx.ReadTimeout("injected", request=request)
            headers = {"retry-after": "0"} if kind == "429" else {}
            return httpx.Response(int(kind), json={"error": "injected"}, headers=headers)
        response = await asgi.handle_async_request(request)
        body = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    router = respx.Router(assert_all_called=False)
    router.route().mock(side_effect=side_effect)
    transport = httpx.MockTransport(router.async_handler)
    transport.fault_state = state  # type: ignore[attr-defined]
    return transport


# -- the runs --------------------------------------------------------------------------------


def _answer(run: int) -> str:
    return f"Answer {run}: noted, fault bench reply number {run}."


def _message(run: int) -> str:
    return f"Message {run}: please remember the fault bench item number {run}."


async def run_fault_bench(
    runs: int = 1000,
    *,
    mode: FaultMode = "server",
    rate: float = 0.3,
    restart_every: int = 100,
    sessions: int = 10,
    seed: int = 0,
    workdir: Path | None = None,
) -> FaultReport:
    """Run the fault bench (see the module docstring). Returns the figures; raises nothing for
    failed runs (they are counted)."""
    from agents import Agent, RunConfig, Runner
    from agents.testing import ScriptedModel, assistant_message

    from ..hooks import TiamatHooks
    from ..stores.cloud import TiamatCloudStore
    from ..stores.sqlite import SQLiteMemoryStore

    report = FaultReport(mode, runs)
    rng = random.Random(seed)
    user = f"faults-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="tiamat-faults-") if workdir is None else None
    folder = Path(tmp.name) if tmp is not None else Path(workdir or ".")
    folder.mkdir(parents=True, exist_ok=True)
    server: _ServerProcess | None = None
    proxy: FaultProxy | None = None
    backing: SQLiteMemoryStore | None = None
    faults: Counter[str] = Counter()
    transport: Any = None
    try:
        client_options: dict[str, Any] = {
            "outbox": folder / f"outbox-{user}.db",
            "timeout": 1.0,
            "max_retries": 2,
            "retry_base_delay": 0.02,
            "retry_max_delay": 0.2,
            "recall_deadline": 0.5,
            "circuit_cooldown": 0.2,
            "detect_retry_interval": 0.5,
        }
        if mode == "server":
            server = _ServerProcess(folder / "server.db", _free_port())
            await asyncio.to_thread(server.start)
            proxy = FaultProxy(server.port, rate=rate, seed=seed)
            await proxy.start()
            base = f"http://127.0.0.1:{proxy.port}"
            direct = f"http://127.0.0.1:{server.port}"
        else:
            from ..server import create_app

            backing = SQLiteMemoryStore(folder / "server.db")
            app = create_app(backing, keys={KEY: "dev"})
            transport = _respx_transport(app, rate, rng, faults)
            client_options["transport"] = transport
            base = direct = "http://tiamat-faults.test"
        store = TiamatCloudStore(base, KEY, **client_options)
        hooks = TiamatHooks(
            store, user_id=user, session_id=lambda ctx: ctx.context, compact_after_tokens=None
        )
        config = RunConfig(tracing_disabled=True)
        for run in range(runs):
            if server is not None and run and run % restart_every == 0:
                await asyncio.to_thread(server.kill)
                await asyncio.sleep(0.2)
                await asyncio.to_thread(server.start)
                report.restarts += 1
            model = ScriptedModel([[assistant_message(_answer(run), item_id=f"m{run}")]])
            agent = Agent(name="assistant", model=model)
            try:
                await Runner.run(
                    agent,
                    _message(run),
                    hooks=hooks,
                    context=f"s{run % sessions}",
                    run_config=config,
                )
            except Exception as exc:  # counted: the figure is "runs failed because of memory"
                report.runs_failed += 1
                if len(report.errors) < 20:
                    report.errors.append(f"run {run}: {type(exc).__name__}: {exc}")
        await hooks.flush()
        report.persist_failures = hooks.stats.failures.get("persist", 0)
        # Faults off, then replay the outbox (bounded attempts).
        if proxy is not None:
            proxy.enabled = False
        if transport is not None:
            transport.fault_state["enabled"] = False
        for _ in range(20):
            try:
                await store.flush()
            except Exception as exc:
                report.errors.append(f"flush: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            if (await store.outbox_status()).pending == 0:
                break
        report.queued_after_replay = (await store.outbox_status()).pending
        report.retries = store.stats_counters["retries"]
        report.writes_queued = store.stats_counters["writes_queued"]
        await store.close()
        # Check on the server, bypassing faults and the client's outbox.
        check_options = {k: v for k, v in client_options.items() if k == "transport"}
        checker = TiamatCloudStore(
            direct, KEY, outbox=":memory:", strict=True, timeout=30.0, **check_options
        )
        try:
            records = await checker.read(Scope(user))
        finally:
            await checker.close()
        texts = Counter(r.text for r in records if r.kind == "turn")
        expected = [t for run in range(runs) for t in (_message(run), _answer(run))]
        report.expected_turns = len(expected)
        report.lost = sum(1 for t in expected if texts[t] == 0)
        report.duplicates = sum(n - 1 for n in texts.values() if n > 1)
    finally:
        if proxy is not None:
            report.faults = dict(proxy.faults)
            await proxy.close()
        else:
            report.faults = dict(faults)
        if server is not None:
            await asyncio.to_thread(server.stop)
        if backing is not None:
            await backing.close()
        if tmp is not None:
            tmp.cleanup()
    report.seconds = time.perf_counter() - started
    return report
