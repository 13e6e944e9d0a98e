"""Dense retrieval (extra ``embeddings``): the MiniLM embedder and the hybrid store.

The model loads once per test session (``default_embedder`` is a process-wide singleton). Without
the extra these tests skip locally and fail in CI, which installs it through ``.[dev]``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_id, require_extra
from tiamat_hooks.errors import ConfigError
from tiamat_hooks.models import MemoryRecord, Scope, make_record
from tiamat_hooks.stores import SQLiteMemoryStore, open_store
from tiamat_hooks.text import index_units

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def _need_extra() -> None:
    from tiamat_hooks.embeddings import _missing_extra

    require_extra("embeddings", _missing_extra())


def _need_bge() -> None:
    from tiamat_hooks.embeddings import BgeSmallEmbedder

    require_extra("bge", BgeSmallEmbedder._missing())


_BGE: list[Any] = []


@pytest.fixture(scope="session", params=["minilm", "bge-small"])
def embedder(request: pytest.FixtureRequest) -> Any:
    """Every embedder the package ships: each test below runs with both."""
    if request.param == "minilm":
        _need_extra()
        from tiamat_hooks.embeddings import default_embedder

        return default_embedder()
    _need_bge()
    from tiamat_hooks.embeddings import BgeSmallEmbedder

    if not _BGE:
        _BGE.append(BgeSmallEmbedder())
    return _BGE[0]


@pytest.fixture
async def hybrid(embedder: Any) -> AsyncIterator[Any]:
    from tiamat_hooks.embeddings import HybridStore

    store = HybridStore(SQLiteMemoryStore(":memory:"), embedder)
    try:
        yield store
    finally:
        await store.close()


def turn(user: str, session: str | None, text: str, i: int = 0, **kw: Any) -> MemoryRecord:
    return make_record(
        user_id=user,
        session_id=session,
        role="user" if i % 2 == 0 else "assistant",
        text=text,
        created_at=T0 + timedelta(minutes=i),
        **kw,
    )


PETS = [
    "I adopted a golden retriever named Biscuit last spring",
    "My sister works as a nurse in Lisbon",
    "We talked about the weather and the news",
    "The quarterly report is due on Friday",
]


# -- the embedder ---------------------------------------------------------------------------------


def test_embed_shape_norm_and_determinism(embedder: Any) -> None:
    import numpy as np

    texts = ["hello world", "", "Café naïve — 日本語 😀", "word " * 5000]
    v = embedder.embed(texts)
    assert v.shape == (4, embedder.dim) == (4, 384)
    assert v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v, embedder.embed(texts))
    # Batching (sorting, padding) does not change what a text means. (bge-small's int8 file
    # quantises activations per batch, so its vectors move a little with the batch: 0.991 seen;
    # MiniLM's do not move.)
    alone = embedder.embed(["hello world"])[0]
    assert float(alone @ v[0]) > (0.985 if hasattr(embedder, "embed_query") else 0.9999)
    assert embedder.embed([]).shape == (0, 384)


def test_embed_semantic_sanity(embedder: Any) -> None:
    pairs = [
        ("What is the name of my dog?", PETS[0], PETS[3]),
        ("Where does your sibling work?", PETS[1], PETS[0]),
        ("How is the climate today?", "It is sunny and warm outside", "I sold my old bicycle"),
    ]
    for query, close, far in pairs:
        q, a, b = embedder.embed([query, close, far])
        assert float(q @ a) > float(q @ b) + 0.2, (query, float(q @ a), float(q @ b))


def test_model_id_names_the_settings() -> None:
    _need_extra()
    from tiamat_hooks.embeddings import Embedder, MiniLMEmbedder

    e = MiniLMEmbedder(max_tokens=64)
    assert isinstance(e, Embedder)
    assert e.model_id.endswith("/64") and e.dim == 384
    with pytest.raises(ConfigError):
        MiniLMEmbedder(max_tokens=4)


def test_bge_embeds_queries_with_its_retrieval_instruction() -> None:
    _need_bge()
    import numpy as np

    from tiamat_hooks.embeddings import BgeSmallEmbedder, Embedder

    e = BgeSmallEmbedder(max_tokens=64)
    assert isinstance(e, Embedder) and e.dim == 384
    assert e.model_id.startswith("bge-small-en/") and e.model_id.endswith("/64")
    query = "Which animal did I get as a pet?"
    q = e.embed_query([query])
    assert q.shape == (1, 384)
    instructed = e.embed(["Represent this sentence for searching relevant passages: " + query])
    assert np.allclose(q, instructed, atol=1e-6)
    assert float(q[0] @ e.embed([query])[0]) < 0.99  # the instruction changes the vector
    # The instruction serves retrieval: the answer is closer to the query than the other texts.
    docs = e.embed(PETS)
    assert int(np.argmax(docs @ q[0])) == 0
    with pytest.raises(ConfigError):
        BgeSmallEmbedder(max_tokens=1024)


@pytest.mark.parametrize(
    ("name", "folder", "expected"),
    [
        ("BgeSmallEmbedder", "models/data/bge_small_en", r"bge-small-en.*tiamat-hooks\[bge\]"),
        ("MiniLMEmbedder", ".", r"all-MiniLM-L6-v2.*tiamat-hooks\[embeddings\]"),
    ],
)
def test_embedders_refuse_a_model_file_they_were_not_measured_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, folder: str, expected: str
) -> None:
    if name == "BgeSmallEmbedder":
        _need_bge()
    else:
        _need_extra()
    from tiamat_hooks import embeddings

    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / "model.onnx").write_bytes(b"not the model")
    monkeypatch.setattr(embeddings, "package_dir", lambda name, hint: tmp_path)
    with pytest.raises(ConfigError, match=expected):
        getattr(embeddings, name)().embed(["hello"])


async def test_hybrid_store_takes_the_embedders_similarity_floor(embedder: Any) -> None:
    from tiamat_hooks.embeddings import HybridStore

    store = HybridStore(SQLiteMemoryStore(":memory:"), embedder)
    explicit = HybridStore(SQLiteMemoryStore(":memory:"), embedder, min_similarity=0.3)
    try:
        assert store.min_similarity == getattr(embedder, "similarity_floor", 0.2)
        assert explicit.min_similarity == 0.3
    finally:
        await store.close()
        await explicit.close()
    for bad in (float("nan"), 1.5, -2, True, "0.5"):
        with pytest.raises(ConfigError, match="min_similarity"):
            HybridStore(SQLiteMemoryStore(":memory:"), embedder, min_similarity=bad)


# -- the hybrid store -----------------------------------------------------------------------------


async def test_finds_a_paraphrase_the_lexical_search_misses(hybrid: Any) -> None:
    u = new_id()
    await hybrid.add([turn(u, "s", t, i) for i, t in enumerate(PETS)])
    query = "Which animal did I get as a pet?"
    lexical = await hybrid.inner.search(query, Scope(u))
    assert all("Biscuit" not in h.record.text for h in lexical)
    hits = await hybrid.search(query, Scope(u))
    assert hits and "Biscuit" in hits[0].record.text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.record.id for h in hits}) == len(hits)


async def test_lexical_and_dense_agree_on_an_exact_match(hybrid: Any) -> None:
    u = new_id()
    await hybrid.add([turn(u, "s", t, i) for i, t in enumerate(PETS)])
    hits = await hybrid.search("quarterly report due Friday", Scope(u), limit=2)
    assert len(hits) <= 2 and "quarterly" in hits[0].record.text


async def test_score_fusion_keeps_the_lexical_scores_shape(embedder: Any) -> None:
    from tiamat_hooks.embeddings import HybridStore

    lexical_only = HybridStore(SQLiteMemoryStore(":memory:"), embedder, dense_weight=0.0)
    try:
        u = new_id()
        texts = [*PETS, "Biscuit the golden retriever swam in the lake", "A report on Biscuit"]
        await lexical_only.add([turn(u, "s", t, i) for i, t in enumerate(texts)])
        query = "golden retriever Biscuit"
        inner = await lexical_only.inner.search(query, Scope(u))
        fused = await lexical_only.search(query, Scope(u))
        assert len(inner) >= 3
        assert [h.record.id for h in fused] == [h.record.id for h in inner]
        # Ratios to the best hit survive (rank fusion would flatten them to 1/(k + rank)).
        top = inner[0].score
        assert [round(h.score, 9) for h in fused] == [round(h.score / top, 9) for h in inner]
    finally:
        await lexical_only.close()


async def test_a_record_both_sides_find_outranks_one_side_alone(hybrid: Any) -> None:
    u = new_id()
    await hybrid.add([turn(u, "s", t, i) for i, t in enumerate(PETS)])
    query = "golden retriever"
    lexical = await hybrid.inner.search(query, Scope(u))
    hits = await hybrid.search(query, Scope(u))
    assert [h.record.id for h in lexical][:1] == [hits[0].record.id]
    # Found by both: the lexical share (1.0, the best) plus a dense share.
    assert hits[0].score > hybrid.lexical_weight


def test_fusion_shares(embedder: Any) -> None:
    from tiamat_hooks.embeddings import HybridStore
    from tiamat_hooks.models import SearchHit

    inner = SQLiteMemoryStore(":memory:")
    rec = [turn("u", "s", f"t{i}", i) for i in range(3)]
    by_score = HybridStore(inner, embedder)
    hits = [SearchHit(rec[0], 0.8), SearchHit(rec[1], 0.5), SearchHit(rec[2], 0.2)]
    assert by_score._parts(hits, 0.2) == pytest.approx([1.0, 0.5, 0.0])
    assert by_score._parts(hits, 0.0) == pytest.approx([1.0, 0.625, 0.25])
    no_scores = [SearchHit(r, 0.0) for r in rec]  # a store that does not score
    assert by_score._parts(no_scores, 0.0) == pytest.approx([1.0, 1 / 2, 1 / 3])
    assert by_score._parts([], 0.2) == []
    by_rank = HybridStore(inner, embedder, fusion="rrf", rrf_k=5)
    assert by_rank._parts(hits, 0.2) == pytest.approx([1 / 6, 1 / 7, 1 / 8])
    with pytest.raises(ConfigError, match="fusion"):
        HybridStore(inner, embedder, fusion="max")  # type: ignore[arg-type]


async def test_query_about_nothing_stored_finds_nothing(hybrid: Any) -> None:
    u = new_id()
    await hybrid.add([turn(u, "s", "completely unrelated", 0)])
    assert await hybrid.search("xylophone", Scope(u)) == []
    assert await hybrid.search("", Scope(u)) == []


async def test_scopes_isolate_users_agents_and_sessions(hybrid: Any) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    await hybrid.add([turn(alice, "s", PETS[0], 0)])
    await hybrid.add([turn(bob, "s", "I like sushi", 0)])
    hits = await hybrid.search("Which animal did I get as a pet?", Scope(bob))
    assert all(h.record.user_id == bob for h in hits)
    await hybrid.add(
        [
            make_record(user_id=bob, session_id="s1", agent_id="a1", text="My cat is called Tom"),
            make_record(user_id=bob, session_id="s2", agent_id="a2", text="A kitten named Luna"),
        ]
    )
    by_session = await hybrid.search("my feline pet", Scope(bob, session_id="s2"))
    assert by_session and {h.record.session_id for h in by_session} == {"s2"}
    by_agent = await hybrid.search("my feline pet", Scope(bob, agent_id="a1"))
    assert by_agent and {h.record.agent_id for h in by_agent} == {"a1"}
    summaries = await hybrid.search("my feline pet", Scope(bob), kinds=["summary"])
    assert summaries == []


async def test_delete_removes_from_the_dense_index(hybrid: Any) -> None:
    u = new_id()
    recs = await hybrid.add([turn(u, "s", t, i) for i, t in enumerate(PETS)])
    dog = recs[0]
    assert await hybrid.delete(Scope(u), ids=[dog.id]) == 1
    hits = await hybrid.search("Which animal did I get as a pet?", Scope(u))
    assert all(h.record.id != dog.id for h in hits)
    assert dog.id not in hybrid._users[u].unit_record
    assert len(hybrid._users[u].vectors()) == len(hybrid._users[u].unit_record) == 3
    await hybrid.delete(Scope(u))
    assert await hybrid.search("nurse in Lisbon", Scope(u)) == []
    assert hybrid._users[u].unit_record == []


async def test_backfills_records_stored_before(embedder: Any, tmp_path: Path) -> None:
    from tiamat_hooks.embeddings import HybridStore

    u = new_id()
    plain = SQLiteMemoryStore(tmp_path / "m.db")
    await plain.add([turn(u, "s", t, i) for i, t in enumerate(PETS)])
    await plain.close()
    store = HybridStore(SQLiteMemoryStore(tmp_path / "m.db"), embedder)
    try:
        hits = await store.search("Which animal did I get as a pet?", Scope(u))
        assert hits and "Biscuit" in hits[0].record.text
        assert store.embedded_texts == len(PETS) + 1  # the units, then the query
        # Records another writer adds show up once the index is due for a refresh.
        store.refresh_seconds = 0.0
        other = SQLiteMemoryStore(tmp_path / "m.db")
        await other.add([turn(u, "s", "Our parrot Kiwi can say hello", 4)])
        await other.close()
        hits = await store.search("which bird can speak", Scope(u))
        assert hits and "Kiwi" in hits[0].record.text
    finally:
        await store.close()


async def test_spans_of_long_records_agree_with_index_units(hybrid: Any) -> None:
    u = new_id()
    filler = " ".join(f"Sentence {i} talks about ordinary daily routines." for i in range(60))
    text = filler + " The secret ingredient of my grandmother's cake is cardamom. " + filler
    short = "Short reply"
    (rec, _) = await hybrid.add([turn(u, "s", text, 0), turn(u, "s", short, 1)])
    units = [(x.start, x.end) for x in index_units(text)]
    assert len(units) > 2
    index = hybrid._users[u]
    assert [
        s for r, s in zip(index.unit_record, index.unit_span, strict=True) if r == rec.id
    ] == units
    assert [s for r, s in zip(index.unit_record, index.unit_span, strict=True) if r != rec.id] == [
        None
    ]
    dense = await hybrid._dense_search("spice in granny's baking", Scope(u), ["turn"], 10)
    assert dense[0].record.id == rec.id and dense[0].span in units
    assert "cardamom" in text[dense[0].span[0] : dense[0].span[1]]
    lexical = await hybrid.inner.search("cardamom", Scope(u))
    assert lexical[0].span in units
    fused = await hybrid.search("secret ingredient cardamom", Scope(u))
    assert fused[0].record.id == rec.id and "cardamom" in text[slice(*fused[0].span)]


async def test_previous_turn_context_matches_the_lexical_index(hybrid: Any) -> None:
    from tiamat_hooks.embeddings import _units

    u = new_id()
    first = await hybrid.add(
        [turn(u, "s", "Where did you go on holiday?", 0, meta={"speaker": "Ann"})]
    )
    second = await hybrid.add([turn(u, "s", "Yes, in May.", 1, meta={"speaker": "Bob"})])
    (unit,) = _units(second[0], first[0].text, with_context=True)
    assert unit.text == "Bob: Where did you go on holiday?\nYes, in May."
    hits = await hybrid.search("holiday trip", Scope(u))
    assert {h.record.id for h in hits} == {first[0].id, second[0].id}


async def test_vector_cache_survives_a_restart_and_forgets(embedder: Any, tmp_path: Path) -> None:
    import sqlite3

    from tiamat_hooks.embeddings import HybridStore

    u = new_id()
    db, cache = tmp_path / "m.db", tmp_path / "vectors.db"
    store = HybridStore(SQLiteMemoryStore(db), embedder, cache_path=cache)
    await store.add([turn(u, "s", t, i) for i, t in enumerate(PETS)])
    assert store.embedded_texts == len(PETS)
    await store.close()
    store = HybridStore(SQLiteMemoryStore(db), embedder, cache_path=cache)
    try:
        hits = await store.search("Which animal did I get as a pet?", Scope(u))
        assert hits and "Biscuit" in hits[0].record.text
        assert store.embedded_texts == 1  # only the query
        await store.delete(Scope(u))
    finally:
        await store.close()
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0


class _CountingEmbedder:
    """A stand-in embedder: bag of letters. Enough to check wiring without the model."""

    model_id = "letters"
    dim = 26

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


async def test_recall_bench_passes_hybrid_options(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numpy")
    from tests.test_cli import tiny_dataset
    from tiamat_hooks import embeddings
    from tiamat_hooks.bench.dataset import BenchDataset
    from tiamat_hooks.bench.recall import run_recall_bench

    made: list[Any] = []

    class Recording(embeddings.HybridStore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(embeddings, "HybridStore", Recording)
    data = BenchDataset.model_validate(tiny_dataset())
    options = {"fusion": "rrf", "dense_weight": 0.25}
    report = await run_recall_bench(
        data, budgets=(256,), embeddings=_CountingEmbedder(), hybrid_options=options
    )
    assert report.embeddings is not None and made
    assert all(s.fusion == "rrf" and s.dense_weight == 0.25 for s in made)
    with pytest.raises(ConfigError, match="need embeddings"):
        await run_recall_bench(data, budgets=(256,), hybrid_options=options)


def test_bench_recall_embedder_option(tmp_path: Path) -> None:
    """``--embedder bge-small`` runs the bench with bge-small (the report names it); without
    ``--embeddings`` the option is refused."""
    import json

    from typer.testing import CliRunner

    from tests.test_cli import tiny_dataset
    from tiamat_hooks.cli import app

    _need_bge()
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dataset()))
    out = tmp_path / "out.json"
    runner = CliRunner()
    args = ["bench", "recall", str(path), "--budget", "256", "--json", str(out)]
    res = runner.invoke(app, [*args, "--embeddings", "--embedder", "bge-small"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["embeddings"]["model"].startswith("bge-small-en/")
    assert report["results"][0]["recall"]["single-hop"] == 1.0
    refused = runner.invoke(app, [*args, "--embedder", "bge-small"])
    assert refused.exit_code != 0 and "needs --embeddings" in refused.output


async def test_open_store_wires_an_embedder(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    from tiamat_hooks.embeddings import HybridStore
    from tiamat_hooks.redaction import RedactingStore

    store = open_store(tmp_path / "m.db", embeddings=_CountingEmbedder(), redact=True)
    try:
        assert isinstance(store, HybridStore) and isinstance(store.inner, RedactingStore)
        u = new_id()
        await store.add([turn(u, "s", "mail me at ann@example.com about apples", 0)])
        hits = await store.search("apples", Scope(u))
        assert hits and "[REDACTED:email]" in hits[0].record.text
    finally:
        await store.close()
    assert not isinstance(open_store(tmp_path / "n.db"), HybridStore)
    with pytest.raises(ConfigError):
        open_store(tmp_path / "m.db", embeddings="yes")  # type: ignore[arg-type]


def test_missing_extra_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tiamat_hooks import embeddings

    real = importlib.util.find_spec

    def fake(name: str, *args: Any) -> Any:
        return None if name == "onnxruntime" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    monkeypatch.setattr(embeddings, "_DEFAULT", None)
    with pytest.raises(ConfigError, match=r"pip install 'tiamat-hooks\[embeddings\]'"):
        embeddings.MiniLMEmbedder()
    with pytest.raises(ConfigError, match=r"pip install 'tiamat-hooks\[bge\]'"):
        embeddings.BgeSmallEmbedder()
    with pytest.raises(ConfigError, match="onnxruntime"):
        open_store(tmp_path / "m.db", embeddings=True)


def test_import_tiamat_hooks_loads_no_model_library() -> None:
    code = (
        "import sys, tiamat_hooks, tiamat_hooks.stores; "
        "print(','.join(m for m in ('numpy', 'onnxruntime', 'tokenizers', "
        "'tiamat_hooks.embeddings') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
