"""What the optional ONNX models (dense embedders, cross-encoder) share: finding and checking
their files, one CPU session setup and length-sorted, padded batches. Imports numpy and
onnxruntime only when called."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError


def package_dir(name: str, hint: str) -> Path:
    """The folder of the installed package ``name``; :class:`ConfigError` with ``hint`` (how to
    install it) when it is not installed."""
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ConfigError(f"{name} is not installed: {hint}")
    return Path(locations[0])


def checked_bytes(path: Path, sha256: str, what: str, hint: str) -> bytes:
    """The bytes of a model file, if they hash to ``sha256``: another file would behave
    differently from what was measured. :class:`ConfigError` naming ``what`` was expected and
    ``hint`` (how to reinstall) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc}); reinstall it: {hint}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"{path} is not the expected {what}; reinstall it: {hint}")
    return data


def cpu_session(model: bytes, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads that sleep when idle."""
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: the host application (and the event loop)
    # needs the CPU between the short bursts of a recall.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def padded_batches(encodings: Sequence[Any], batch_tokens: int) -> Iterator[tuple[Any, ...]]:
    """Yield ``(indices, input_ids, attention_mask, token_type_ids)`` per batch.

    ``encodings`` are ``tokenizers`` encodings. They are taken shortest first, so padding stays
    small, and a batch holds at most ``batch_tokens`` padded tokens (a longer single encoding
    is a batch of its own). ``indices`` say which encodings a batch's rows are.
    """
    import numpy as np

    n = len(encodings)
    order = sorted(range(n), key=lambda i: len(encodings[i].ids))
    start = 0
    while start < n:
        end = start + 1
        while end < n and len(encodings[order[end]].ids) * (end + 1 - start) <= batch_tokens:
            end += 1
        idx = order[start:end]
        width = len(encodings[idx[-1]].ids)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, i in enumerate(idx):
            enc = encodings[i]
            m = len(enc.ids)
            ids[row, :m] = enc.ids
            mask[row, :m] = 1
            types[row, :m] = enc.type_ids
        yield idx, ids, mask, types
        start = end
