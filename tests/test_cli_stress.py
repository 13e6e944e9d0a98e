"""``tiamat-hooks bench stress``, invoked as a user would: summary, JSON and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiamat_hooks.bench import stress
from tiamat_hooks.cli import app

runner = CliRunner()


@pytest.mark.parametrize("mode", ["runs", "adds"])
def test_small_stress_passes_and_writes_json(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "stress.json"
    url = "sqlite:///" + (tmp_path / "stress.db").as_posix()
    args = ["--workers", "2", "--runs", "6", "--users", "2", "--sessions", "2"]
    res = runner.invoke(
        app, ["bench", "stress", "--store", url, *args, "--mode", mode, "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "problems found" in res.output and "worker errors" in res.output
    report = json.loads(out.read_text())
    assert report["problems"] == [] and report["mode"] == mode
    assert [r["errors"] for r in report["reports"]] == [[], []]
    if mode == "runs":
        # 6 runs a worker, every third with a tool call: 2 x (2 x 4 + 4 x 2) turns.
        assert [r["runs"] for r in report["reports"]] == [6, 6]
        assert report["written"] == 32
    else:
        assert [r["adds"] for r in report["reports"]] == [6, 6]
    assert report["written"] == sum(r["records"] for r in report["reports"])

    # The store can be reused: a second benchmark writes a fresh set of users.
    again = runner.invoke(app, ["bench", "stress", "--store", url, *args, "--mode", mode])
    assert again.exit_code == 0, again.output


def test_problems_found_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def damaged(*args: object, **kwargs: object) -> list[str]:
        return ["lost turn ('u', 's', ('message', 'user', 'hello'))"]

    # The checker itself is tested in tests/test_multiprocess.py; here only what the CLI does
    # with what it reports.
    monkeypatch.setattr(stress, "verify_runs", damaged)
    url = "sqlite:///" + (tmp_path / "stress.db").as_posix()
    res = runner.invoke(app, ["bench", "stress", "--store", url, "--workers", "1", "--runs", "1"])
    assert res.exit_code == 1
    assert "lost turn" in res.output


def test_bad_mode_is_a_usage_error() -> None:
    res = runner.invoke(app, ["bench", "stress", "--mode", "threads"])
    assert res.exit_code == 2
