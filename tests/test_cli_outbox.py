"""``tiamat-hooks outbox status|flush``, invoked as a user would, against the self-hosted server.

The CLI builds its own HTTP client, so the server listens on loopback. "Down" is a port that is
bound but not listening yet (connections are refused); "up" is uvicorn serving on that socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tiamat_hooks.cli import app
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

KEY = "cli-outbox-key"
runner = CliRunner()


@dataclass
class Loopback:
    """A loopback port for the server: refused until :meth:`start`."""

    db: Path
    sock: socket.socket = field(init=False)
    server: Any = None
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused

    @property
    def url(self) -> str:
        return f"http://{KEY}@127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> None:
        import uvicorn

        from tiamat_hooks.server import create_app

        app_ = create_app(SQLiteMemoryStore(self.db), keys={KEY: "cli"}, close_store=True)
        self.server = uvicorn.Server(uvicorn.Config(app_, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        pause = threading.Event()  # never set: only its bounded wait is used, to poll
        while self.thread.is_alive() and not self.server.started:
            pause.wait(0.05)
        if not self.server.started:
            pytest.fail("uvicorn did not start")

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[Loopback]:
    pytest.importorskip("uvicorn")
    lb = Loopback(tmp_path / "server.db")
    try:
        yield lb
    finally:
        lb.stop()


def write_offline(url: str, outbox: Path | None, user: str, text: str) -> int | None:
    """What an application does: add a turn; the service is away, so it is queued."""

    async def go() -> int | None:
        options: dict[str, Any] = {"max_retries": 0, "timeout": 5.0}
        if outbox is not None:
            options["outbox"] = outbox
        store = TiamatCloudStore.from_url(url, **options)
        try:
            (rec,) = await store.add(
                [make_record(user_id=user, session_id="s", role="user", text=text)]
            )
            return rec.seq
        finally:
            await store.close()

    return asyncio.run(go())


def read_back(url: str, user: str) -> list[tuple[int | None, str]]:
    async def go() -> list[tuple[int | None, str]]:
        store = TiamatCloudStore.from_url(url, outbox=":memory:")
        try:
            return [(r.seq, r.text) for r in await store.read(Scope(user))]
        finally:
            await store.close()

    return asyncio.run(go())


def test_status_and_flush_with_an_explicit_outbox(loopback: Loopback, tmp_path: Path) -> None:
    outbox = tmp_path / "app-outbox.db"
    assert write_offline(loopback.url, outbox, "alice", "said while the server was down") == 1
    args = ["--store", loopback.url, "--outbox", str(outbox)]

    status = runner.invoke(app, ["outbox", "status", *args])
    assert status.exit_code == 0, status.output
    assert "1 queued write(s) for 1 user(s)" in status.output
    assert "alice" in status.output

    down = runner.invoke(app, ["outbox", "flush", *args])
    assert down.exit_code == 1
    assert "delivered 0, remaining 1" in down.output

    loopback.start()
    up = runner.invoke(app, ["outbox", "flush", *args])
    assert up.exit_code == 0, up.output
    assert "delivered 1, remaining 0" in up.output

    after = runner.invoke(app, ["outbox", "status", *args])
    assert after.exit_code == 0
    assert "0 queued write(s) for 0 user(s)" in after.output
    assert read_back(loopback.url, "alice") == [(1, "said while the server was down")]
    assert KEY not in status.output + down.output + up.output + after.output


def test_default_outbox_is_found_from_the_url(
    loopback: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The application and the CLI both use the default outbox of URL + key.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    write_offline(loopback.url, None, "bob", "queued in the default outbox")
    status = runner.invoke(app, ["outbox", "status", "--store", loopback.url])
    assert "1 queued write(s)" in status.output, status.output
    loopback.start()
    flushed = runner.invoke(app, ["outbox", "flush", "--store", loopback.url])
    assert flushed.exit_code == 0, flushed.output
    assert "delivered 1, remaining 0" in flushed.output


def test_outbox_commands_need_a_tiamat_store(tmp_path: Path) -> None:
    result = runner.invoke(app, ["outbox", "status", "--store", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 1
    assert "InvalidInputError" in result.output
