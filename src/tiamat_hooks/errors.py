"""The exceptions tiamat-hooks raises.

Every exception the package raises on purpose derives from :class:`TiamatError`, so callers can
catch one class. Driver errors (``sqlite3``, the Postgres driver, ``httpx``) are mapped into this
tree in one place per backend and chained with ``from exc``; they never escape raw.

::

    TiamatError
    ├── StoreError                   the store could not do what was asked (operational)
    │   ├── StoreUnavailableError    cannot connect / server down / HTTP 5xx after retries
    │   ├── StoreTimeoutError        a deadline passed
    │   ├── QuotaExceededError       the hosted API answered 429 and retries ran out
    │   └── StoreConflictError       a write conflicted and could not be retried
    ├── CapabilityError              the store cannot do this at all (e.g. delete on the hosted API)
    ├── EncodingUnavailableError     no tiktoken encoding could be loaded (says how to fix it)
    ├── SummarizationError           a summarizer failed after retries; the raw turns are kept
    ├── FactExtractionError          the fact-extraction model's answer was unusable
    └── InvalidInputError            bad input from the caller (also a ValueError)
        ├── InvalidScopeError        empty or malformed user/agent/session id
        ├── InvalidRecordError       a record that cannot be stored as given
        └── ConfigError              bad configuration (URL, budget, option)

Misuse errors subclass :class:`ValueError` as well, so ``except ValueError`` keeps working for
code that does not know this package.
"""

from __future__ import annotations

__all__ = [
    "CapabilityError",
    "ConfigError",
    "EncodingUnavailableError",
    "FactExtractionError",
    "InvalidInputError",
    "InvalidRecordError",
    "InvalidScopeError",
    "QuotaExceededError",
    "StoreConflictError",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "SummarizationError",
    "TiamatError",
]


class TiamatError(Exception):
    """Base class of every error tiamat-hooks raises on purpose."""


class StoreError(TiamatError):
    """The store failed to carry out an operation that was well formed."""


class StoreUnavailableError(StoreError):
    """The backend cannot be reached (connection refused, server down, 5xx after retries)."""


class StoreTimeoutError(StoreError):
    """The operation did not finish before its deadline."""


class QuotaExceededError(StoreError):
    """The hosted API refused the request for quota reasons (HTTP 429) and retries ran out."""


class StoreConflictError(StoreError):
    """A write conflicted with another writer and could not be completed."""


class CapabilityError(TiamatError):
    """The store does not support this operation (see ``store.capabilities``)."""


class EncodingUnavailableError(TiamatError):
    """No tiktoken encoding could be loaded. The message says how to fix it."""


class SummarizationError(TiamatError):
    """A summarizer failed (after retries) or answered nothing usable. Nothing was written."""


class FactExtractionError(TiamatError):
    """The extraction model failed or answered something that is not the requested JSON."""


class InvalidInputError(TiamatError, ValueError):
    """The caller passed something that cannot be used. Nothing was written."""


class InvalidScopeError(InvalidInputError):
    """A user, agent or session id is empty, too long or contains forbidden characters."""


class InvalidRecordError(InvalidInputError):
    """A memory record is malformed (unknown kind, text too large, bad timestamp...)."""


class ConfigError(InvalidInputError):
    """A configuration value is invalid (unknown store URL scheme, negative budget...)."""
