"""Retention: delete a scope's records older than a time-to-live, on stores that can delete.

:func:`expire` is written once on top of the store contract (``read`` + ``delete(ids=...)``), so
every backend that can delete gets it; a store that cannot (the hosted TIAMAT API) raises
:class:`~tiamat_hooks.errors.CapabilityError` before anything is read. Every record kind (turns,
summaries, facts) is covered. :func:`parse_age` reads ``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from .errors import CapabilityError, ConfigError
from .models import Scope, utcnow
from .stores.base import MemoryStore

__all__ = ["expire", "parse_age"]

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``"30d"`` -> 30 days (units s, m, h, d, w).

    Raises:
        ConfigError: the text is not ``<positive integer><unit>``.
    """
    match = _AGE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) <= 0:
        raise ConfigError(f"age must look like 30d, 12h, 90m or 2w, got {text!r}")
    return timedelta(**{_UNITS[match.group(2).lower()]: int(match.group(1))})


async def expire(
    store: MemoryStore,
    scope: Scope,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    batch: int = 500,
) -> int:
    """Delete the records of ``scope`` created more than ``older_than`` before ``now``.

    Returns how many were deleted. Records at or after the cut-off are kept.

    Raises:
        CapabilityError: the store cannot delete (``capabilities.can_delete`` is false).
        ConfigError: ``older_than`` is not a positive duration.
    """
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise ConfigError("older_than must be a positive timedelta")
    if not store.capabilities.can_delete:
        raise CapabilityError("this store cannot delete records, so it cannot expire them")
    cutoff = (now or utcnow()) - older_than
    old = [r.id for r in await store.read(scope) if r.created_at < cutoff]
    deleted = 0
    for i in range(0, len(old), batch):
        deleted += await store.delete(scope, ids=old[i : i + batch])
    return deleted
