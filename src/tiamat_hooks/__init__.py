"""tiamat-hooks: long-term memory and context compaction for the OpenAI Agents SDK.

The public API is what this module exports; everything else is an implementation detail.
"""

from __future__ import annotations

from .compaction import (
    CompactedInput,
    Compactor,
    ExtractiveSummarizer,
    ModelSummarizer,
    SummarizationError,
    Summarizer,
    compact_input,
    count_item_tokens,
)
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
from .facts import (
    Fact,
    FactExtractionError,
    FactExtractor,
    current_facts,
    fact_history,
    learn,
    render_fact,
)
from .hooks import HookStats, TiamatHooks
from .models import MemoryRecord, Scope, SearchHit, SessionInfo, StoreCapabilities, StoreStats
from .recall import RecallConfig, Recaller, RecallResult, Snippet
from .redaction import DefaultRedactor, RedactingStore, Redactor
from .retention import expire
from .session import TiamatSession
from .stores import MemoryStore, SQLiteMemoryStore, open_store
from .stores.cloud import TiamatCloudStore
from .tokens import TokenCounter, get_encoding
from .tools import memory_tools

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Optional backends load lazily: `import tiamat_hooks` never imports a Postgres driver.
    if name == "PostgresMemoryStore":
        from .stores.postgres import PostgresMemoryStore

        return PostgresMemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CapabilityError",
    "CompactedInput",
    "Compactor",
    "ConfigError",
    "DefaultRedactor",
    "EncodingUnavailableError",
    "ExtractiveSummarizer",
    "Fact",
    "FactExtractionError",
    "FactExtractor",
    "HookStats",
    "InvalidInputError",
    "InvalidRecordError",
    "InvalidScopeError",
    "MemoryRecord",
    "MemoryStore",
    "ModelSummarizer",
    "PostgresMemoryStore",
    "QuotaExceededError",
    "RecallConfig",
    "RecallResult",
    "Recaller",
    "RedactingStore",
    "Redactor",
    "SQLiteMemoryStore",
    "Scope",
    "SearchHit",
    "SessionInfo",
    "Snippet",
    "StoreCapabilities",
    "StoreConflictError",
    "StoreError",
    "StoreStats",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "SummarizationError",
    "Summarizer",
    "TiamatCloudStore",
    "TiamatError",
    "TiamatHooks",
    "TiamatSession",
    "TokenCounter",
    "__version__",
    "compact_input",
    "count_item_tokens",
    "current_facts",
    "expire",
    "fact_history",
    "get_encoding",
    "learn",
    "memory_tools",
    "open_store",
    "render_fact",
]
