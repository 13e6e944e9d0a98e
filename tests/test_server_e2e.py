"""End to end over loopback: ``tiamat-hooks serve`` in its own process, and two "devices" (two
more OS processes, each with its own outbox) sharing one user's memory through it."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tiamat_hooks.server import KeyRegistry

pytestmark = pytest.mark.slow

_RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")

# One device: a fresh process with its own outbox, talking to the server over loopback.
DEVICE = r"""
import asyncio, json, sys
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.stores.cloud import TiamatCloudStore

base_url, key, outbox, action, arg = sys.argv[1:6]

async def main():
    store = TiamatCloudStore(base_url, key, outbox=outbox, strict=True, recall_deadline=30.0,
                             timeout=30.0)
    try:
        if action == "write":
            records = [make_record(user_id="alice", session_id="trip", role="user", text=t)
                       for t in json.loads(arg)]
            out = [{"seq": r.seq, "text": r.text} for r in await store.add(records)]
        elif action == "recall":
            hits = await store.search(arg, Scope("alice"))
            out = [h.record.text for h in hits]
        else:
            out = [{"seq": r.seq, "text": r.text}
                   for r in await store.read(Scope("alice", session_id="trip"))]
        status = await store.outbox_status()
        print(json.dumps({"result": out, "queued": status.pending + status.dead}))
    finally:
        await store.close()

asyncio.run(main())
"""


@dataclass
class Server:
    url: str
    key: str
    registry: KeyRegistry


def device(server: Server, outbox: Path, action: str, arg: str = "") -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", DEVICE, server.url, server.key, str(outbox), action, arg],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    registry = KeyRegistry(tmp_path / "keys.db")
    key, _ = registry.create("alice-devices", tenant="alice")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiamat_hooks.cli",
            "serve",
            "--store",
            f"sqlite:///{tmp_path / 'memory.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--keys",
            str(registry.path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        # Keep draining stderr so the server never blocks on a full pipe.
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                pytest.fail("server did not start within 60s:\n" + "".join(seen))
            if line is None:
                pytest.fail("server exited:\n" + "".join(seen))
            seen.append(line)
            match = _RUNNING.search(line)
            if match:
                break
        yield Server(match.group(1), key, registry)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_devices_share_one_users_memory(server: Server, tmp_path: Path) -> None:
    a, b = tmp_path / "device-a.db", tmp_path / "device-b.db"
    written = device(
        server,
        a,
        "write",
        json.dumps(["We land in Kyoto on the 3rd", "Book the ryokan near Gion for two nights"]),
    )
    assert written == {
        "result": [
            {"seq": 1, "text": "We land in Kyoto on the 3rd"},
            {"seq": 2, "text": "Book the ryokan near Gion for two nights"},
        ],
        "queued": 0,
    }

    recalled = device(server, b, "recall", "when do we land in kyoto")
    assert recalled["result"][0] == "We land in Kyoto on the 3rd"

    # B continues the session: numbering picks up after A's turns, and A sees B's turn.
    more = device(server, b, "write", json.dumps(["Rent bikes for the Philosopher's Path"]))
    assert more["result"] == [{"seq": 3, "text": "Rent bikes for the Philosopher's Path"}]
    read = device(server, a, "read")
    assert [r["seq"] for r in read["result"]] == [1, 2, 3]
    assert read["result"][2]["text"] == "Rent bikes for the Philosopher's Path"

    # The running server honours the registry: a revoked key is refused at once.
    headers = {"Authorization": f"Bearer {server.key}"}
    assert httpx.get(server.url + "/api/memory/stats", headers=headers).json()["records"] == 3
    assert server.registry.revoke("alice-devices")
    assert httpx.get(server.url + "/api/memory/stats", headers=headers).status_code == 401
