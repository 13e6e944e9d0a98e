"""tiamat-hooks: long-term memory and context compaction for the OpenAI Agents SDK.

The public API is what this module exports; everything else is an implementation detail.
"""

from __future__ import annotations

from .errors import (
    CapabilityError,
    ConfigError,
    EncodingUnavailableError,
    InvalidInputError,
    InvalidRecordError,
    InvalidScopeError,
    QuotaExceededError,
    StoreConflictError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    TiamatError,
)
from .models import MemoryRecord, Scope, SearchHit, SessionInfo, StoreCapabilities, StoreStats
from .stores import MemoryStore, SQLiteMemoryStore, open_store
from .tokens import TokenCounter, get_encoding

__version__ = "0.1.0"

__all__ = [
    "CapabilityError",
    "ConfigError",
    "EncodingUnavailableError",
    "InvalidInputError",
    "InvalidRecordError",
    "InvalidScopeError",
    "MemoryRecord",
    "MemoryStore",
    "QuotaExceededError",
    "SQLiteMemoryStore",
    "Scope",
    "SearchHit",
    "SessionInfo",
    "StoreCapabilities",
    "StoreConflictError",
    "StoreError",
    "StoreStats",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "TiamatError",
    "TokenCounter",
    "__version__",
    "get_encoding",
    "open_store",
]
