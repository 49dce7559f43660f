"""Content hashes remembered by the identity of the files they were read from, so that the cache key of
an unchanged source (`content_hash`, asked by every `vae run`) costs a `stat` per file, not a pass over
its bytes, or, for sklearn's bundled data, not an import of sklearn and a load (~1 s of a warm
`vae run digits`, issue 26).

A file's identity is (device, inode, size, mtime, ctime), as git's index and DVC's state database key
theirs. ctime cannot be set back by a user, so a file rewritten in place, even to the same size with
its mtime restored, has a new identity. A hash is remembered only for files whose ctime and mtime are
at least RACY_SECONDS old when they are read: a file changed again within the same clock tick would
otherwise keep its identity (git's "racy clean" case).

The memo is one JSON file (`VAE_HOME/datasets/.content-hashes.json`), written to a temporary name
and renamed; one that cannot be read or parsed is treated as empty. It names hashes, never code:
whoever can change it can already change the ingested Parquet files it leads to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MEMO_VERSION = 1  # raise when what a content hash covers changes: every remembered hash is then unknown
RACY_SECONDS = 2.0
MAX_ENTRIES = 1000  # the oldest are dropped beyond this


def _identity(path: Path, now: float) -> list | None:
    """What the file's hash is remembered by; None while it may still change within a clock tick."""
    status = path.stat()
    if now - max(status.st_mtime_ns, status.st_ctime_ns) / 1e9 < RACY_SECONDS:
        return None
    return [str(path), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def _read(memo: Path) -> dict[str, str]:
    try:
        entries = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items() if isinstance(key, str) and isinstance(value, str)}


def _write(memo: Path, entries: dict[str, str]) -> None:
    """Atomically: a reader sees the old memo or the new one. Failing to write only costs the next read."""
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=memo.parent, prefix=".content-hashes-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(dict(list(entries.items())[-MAX_ENTRIES:]), handle)
            os.replace(temporary, memo)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def remembered(memo: Path | None, what: Sequence, files: Sequence[Path], compute: Callable[[], str]) -> str:
    """`compute()`, the content hash of `files` (described by `what`: the spec and how it is read), or
    the hash remembered for the same files unchanged. Without a memo it always computes."""
    if memo is None:
        return compute()
    now = time.time()
    identities = [_identity(path, now) for path in files]
    if any(identity is None for identity in identities):
        return compute()
    key = hashlib.sha256(json.dumps([MEMO_VERSION, list(what), identities]).encode()).hexdigest()
    entries = _read(memo)
    if key in entries:
        return entries[key]
    digest = compute()
    entries = _read(memo)  # another run may have added entries meanwhile
    entries.pop(key, None)
    entries[key] = digest
    _write(memo, entries)
    return digest
