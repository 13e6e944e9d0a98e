"""The CLI, invoked as a user would: output and exit codes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiamat_hooks.cli import app

runner = CliRunner()


def tiny_dataset() -> dict[str, object]:
    return {
        "format": "memory-recall-bench/1",
        "name": "tiny",
        "source": "made up for tests",
        "license": "CC0",
        "conversations": [
            {
                "id": "c1",
                "speakers": {"user": "Ann", "assistant": "Bo"},
                "sessions": [
                    {
                        "id": "S1",
                        "started_at": "2024-01-01T10:00:00",
                        "turns": [
                            {
                                "id": "D1:1",
                                "role": "user",
                                "speaker": "Ann",
                                "text": "I adopted a cat named Pixel.",
                            },
                            {
                                "id": "D1:2",
                                "role": "assistant",
                                "speaker": "Bo",
                                "text": "Lovely! What colour is Pixel?",
                            },
                            {
                                "id": "D1:3",
                                "role": "user",
                                "speaker": "Ann",
                                "text": "Pixel is grey with white paws.",
                                "image_caption": "a grey cat on a sofa",
                            },
                        ],
                    },
                    {
                        "id": "S2",
                        "started_at": "2024-02-01T10:00:00",
                        "turns": [
                            {
                                "id": "D2:1",
                                "role": "user",
                                "speaker": "Ann",
                                "text": "I ran a half marathon in Porto.",
                            },
                            {
                                "id": "D2:2",
                                "role": "assistant",
                                "speaker": "Bo",
                                "text": "What was your time?",
                            },
                        ],
                    },
                ],
                "questions": [
                    {
                        "id": "q1",
                        "question": "What is the name of Ann's cat?",
                        "answer": "Pixel",
                        "asked_at": "2024-03-01T00:00:00",
                        "category": "single-hop",
                        "evidence": ["D1:1"],
                    },
                    {
                        "id": "q2",
                        "question": "Where did Ann run a half marathon?",
                        "answer": "Porto",
                        "asked_at": "2024-03-01T00:00:00",
                        "category": "temporal",
                        "evidence": ["D2:1"],
                    },
                    {
                        "id": "q3",
                        "question": "zzz qqq unknown words",
                        "answer": "-",
                        "asked_at": "2024-03-01T00:00:00",
                        "category": "temporal",
                        "evidence": ["D2:2"],
                    },
                ],
            }
        ],
    }


@pytest.mark.parametrize("gz", [False, True])
def test_bench_recall_json(tmp_path: Path, gz: bool) -> None:
    data = json.dumps(tiny_dataset()).encode()
    path = tmp_path / ("tiny.json.gz" if gz else "tiny.json")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = tmp_path / "out.json"
    res = runner.invoke(
        app, ["bench", "recall", str(path), "--budget", "64,256", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "tiny" and report["questions"] == 3
    assert [r["budget"] for r in report["results"]] == [64, 256]
    big = report["results"][1]
    # q1 and q2 are found, q3 cannot be: overall is exactly 2/3 at the larger budget.
    assert big["recall"]["single-hop"] == 1.0
    assert big["recall"]["temporal"] == 0.5
    assert abs(big["recall"]["overall"] - 2 / 3) < 1e-3
    for r in report["results"]:
        assert r["tokens_max"] <= r["budget"]
        assert set(r["latency_ms"]) == {"p50", "p95"}
        counts = r["evidence"]
        assert counts["total"] == 3
        # One evidence turn per question: the recalled count follows from the recall share.
        assert counts["recalled"] == round(r["recall"]["overall"] * 3)
        # q3's words match nothing: its evidence is never found, at any budget.
        assert counts["not_found"] == 1
    assert big["evidence"] == {"total": 3, "recalled": 2, "not_found": 1, "not_fitted": 0}
    # 64 tokens hold the frame and little else: what was found but left out is "not fitted".
    small = report["results"][0]
    assert small["recall"]["overall"] < 2 / 3
    assert small["evidence"]["not_fitted"] == 2 - round(small["recall"]["overall"] * 3)
    # "found" counts what ranking found whether it fitted or not: q1 and q2 at both budgets,
    # so it stays 2/3 even where the budget cut recall, and never falls below recall.
    for r in report["results"]:
        assert abs(r["found"]["overall"] - 2 / 3) < 1e-3
        assert r["found"]["temporal"] == 0.5 and r["found"]["single-hop"] == 1.0
        assert all(r["found"][k] >= r["recall"][k] for k in r["recall"])
    assert "overall" in res.output and "not fitted" in res.output
    assert "found by ranking" in res.output
    # each category's figure says how many questions it rests on
    assert report["categories"] == {"single-hop": 1, "temporal": 2}
    assert "temporal (2)" in res.output


def test_bench_recall_plot(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dataset()))
    png = tmp_path / "chart.png"
    res = runner.invoke(app, ["bench", "recall", str(path), "--budget", "128", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_recall_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "something-else"}')
    res = runner.invoke(app, ["bench", "recall", str(path)])
    assert res.exit_code == 1
    assert "InvalidInputError" in res.output


def test_bench_recall_set_overrides_the_recall_config(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dataset()))
    out = tmp_path / "out.json"
    args = ["bench", "recall", str(path), "--budget", "256", "--json", str(out)]
    # Searching summaries only finds none of the (turn) evidence: the override reached recall.
    res = runner.invoke(app, [*args, "--set", "kinds=summary", "--set", "cost_exponent=0.3"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["results"][0]["recall"]["overall"] == 0.0
    res = runner.invoke(app, [*args, "--set", "kinds=turn"])
    assert res.exit_code == 0, res.output
    assert abs(json.loads(out.read_text())["results"][0]["recall"]["overall"] - 2 / 3) < 1e-3


def test_recall_config_from_set_pairs() -> None:
    from tiamat_hooks.cli import _recall_config
    from tiamat_hooks.recall import RecallConfig

    assert _recall_config(None) is None
    config = _recall_config(
        [
            "top_k=none",
            "exclude_future=TRUE",
            "cost_exponent=0.3",
            "kinds=turn, summary",
            " candidates = 40 ",
            "header= Memory: ",
        ]
    )
    assert config == RecallConfig(
        top_k=None,
        exclude_future=True,
        cost_exponent=0.3,
        kinds=("turn", "summary"),
        candidates=40,
        header=" Memory: ",
    )
    assert _recall_config(["top_k=3"]) == RecallConfig(top_k=3)
    assert _recall_config(["rerank_timeout=0.25"]) == RecallConfig(rerank_timeout=0.25)
    assert _recall_config(["rerank_timeout=None"]) == RecallConfig(rerank_timeout=None)


@pytest.mark.parametrize(
    "pair",
    [
        "nope=1",
        "budget=100",
        "candidates",
        "candidates=ten",
        "cost_exponent=-1",
        "cost_exponent=nan",
        "neighbor_weight=inf",
        "exclude_future=maybe",
        "exclude_future=1",
        "kinds=bogus",
        "kinds=",
        "top_k=abc",
    ],
)
def test_bench_recall_bad_set(tmp_path: Path, pair: str) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dataset()))
    res = runner.invoke(app, ["bench", "recall", str(path), "--set", pair])
    assert res.exit_code == 2, res.output
    assert "--set" in res.output


@pytest.mark.parametrize("option", [["--fusion", "rrf"], ["--dense-weight", "0.25"]])
def test_bench_recall_fusion_options_need_embeddings(tmp_path: Path, option: list[str]) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dataset()))
    res = runner.invoke(app, ["bench", "recall", str(path), *option])
    assert res.exit_code == 2, res.output
    assert "needs --embeddings" in res.output


def test_bench_recall_bad_budget(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "recall", "x.json", "--budget", "ten"])
    assert res.exit_code == 2


def _seed(db: str) -> None:
    path = Path(db)
    lines = [
        {
            "user_id": "ann",
            "session_id": "s1",
            "role": "user",
            "text": "My favourite tea is genmaicha.",
            "created_at": "2024-01-01T10:00:00Z",
            "key": "k1",
        },
        {
            "user_id": "ann",
            "session_id": "s1",
            "role": "assistant",
            "text": "Toasted rice tea, nice.",
            "created_at": "2024-01-01T10:00:01Z",
            "key": "k2",
        },
        {
            "user_id": "bob",
            "session_id": "s9",
            "role": "user",
            "text": "Bob likes genmaicha too.",
            "created_at": "2024-01-02T10:00:00Z",
            "key": "k3",
        },
    ]
    path.with_suffix(".jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_import_search_show_export_forget(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    url = f"sqlite:///{db}"
    _seed(db)
    jsonl = str(Path(db).with_suffix(".jsonl"))
    res = runner.invoke(app, ["import", jsonl, "--store", url])
    assert res.exit_code == 0, res.output
    assert "imported 3" in res.output
    # importing again is idempotent
    assert runner.invoke(app, ["import", jsonl, "--store", url]).exit_code == 0
    res = runner.invoke(app, ["stats", "--store", url])
    assert json.loads(res.output)["records"] == 3

    res = runner.invoke(app, ["search", "which tea do I like", "--user", "ann", "--store", url])
    assert res.exit_code == 0 and "genmaicha" in res.output and "Bob" not in res.output

    res = runner.invoke(app, ["show", "--user", "ann", "--store", url])
    assert "s1" in res.output
    res = runner.invoke(app, ["show", "--user", "ann", "--session", "s1", "--store", url])
    assert "Toasted" in res.output

    res = runner.invoke(app, ["export", "--store", url, "--user", "ann"])
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["key"] for r in rows] == ["k1", "k2"] and [r["seq"] for r in rows] == [1, 2]

    res = runner.invoke(app, ["forget", "--user", "ann", "--store", url, "--yes"])
    assert res.exit_code == 0 and "removed 2" in res.output
    res = runner.invoke(app, ["stats", "--store", url, "--user", "ann"])
    assert json.loads(res.output)["records"] == 0


def test_migrate_roundtrip(tmp_path: Path) -> None:
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    _seed(str(tmp_path / "a.db"))
    runner.invoke(app, ["import", str(tmp_path / "a.jsonl"), "--store", a])
    res = runner.invoke(app, ["migrate", a, b])
    assert res.exit_code == 0, res.output
    ea = runner.invoke(app, ["export", "--store", a]).output
    eb = runner.invoke(app, ["export", "--store", b]).output
    assert ea == eb and ea.count("\n") == 3


def test_import_bad_line_is_typed_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"user_id": "", "text": "x"}\n')
    res = runner.invoke(app, ["import", str(f), "--store", f"sqlite:///{tmp_path / 'x.db'}"])
    assert res.exit_code == 1
    assert "line 1" in res.output


def test_unknown_store_scheme() -> None:
    res = runner.invoke(app, ["stats", "--store", "ftp://nope"])
    assert res.exit_code == 1 and "ConfigError" in res.output


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and "tiamat-hooks" in res.output


def test_bench_latency_small(tmp_path: Path) -> None:
    out, png = tmp_path / "lat.json", tmp_path / "lat.png"
    db = f"sqlite:///{tmp_path / 'lat.db'}"
    res = runner.invoke(
        app,
        [
            "bench",
            "latency",
            "--store",
            db,
            "--sizes",
            "200,600",
            "--users",
            "3",
            "--queries",
            "5",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    (report,) = json.loads(out.read_text())
    assert [p["turns"] for p in report["points"]] == [200, 600]
    for p in report["points"]:
        assert p["persist_turns_per_s"] > 0
        assert p["recall_ms"]["p95"] >= p["recall_ms"]["p50"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["stats", "--store", db])
    assert json.loads(res.output)["records"] == 600
