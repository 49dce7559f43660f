"""Persisted task results are plain JSON, and a record that is not is never loaded.

Prefect reads a cached result with whatever serializer the record names, so a `pickle` record
planted in a shared VAE_HOME would run code. Every cached task here writes JSON without object
hooks, and its cache key function first checks the record stored under that key: anything but
that exact JSON format is removed (Prefect then sees a cache miss and computes the result again).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from prefect.filesystems import LocalFileSystem
from prefect.serializers import JSONSerializer

# Plain JSON in, plain JSON out: no object encoder or decoder that could name a class to build.
JSON = JSONSerializer(object_encoder=None, object_decoder=None)
_EXPECTED = JSON.model_dump(mode="json")


def is_trusted_record(content: bytes) -> bool:
    """A result record of ours: JSON whose metadata names exactly the plain JSON serializer."""
    try:
        record = json.loads(content)
        return (
            isinstance(record, dict)
            and isinstance(record.get("metadata"), dict)
            and record["metadata"].get("serializer") == _EXPECTED
            and isinstance(record.get("result"), str)
        )
    except (ValueError, UnicodeDecodeError):
        return False


def _drop_untrusted(context, key: str) -> None:
    storage = getattr(getattr(context, "result_store", None), "result_storage", None)
    if not isinstance(storage, LocalFileSystem):
        return  # only the local folder (the default, VAE_HOME/prefect-results) is checked here
    path = storage._resolve_path(key)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return
    except IsADirectoryError:
        content = b""
    if not is_trusted_record(content):
        print(
            f"warning: {path}: not a plain JSON result record of ours; ignored and recomputed",
            file=sys.stderr,
            flush=True,
        )
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def trusted(cache_key_fn: Callable[[Any, dict], str | None]) -> Callable[[Any, dict], str | None]:
    """Wrap a cache key function: the record under the key is checked before Prefect reads it."""

    @functools.wraps(cache_key_fn)
    def key(context, parameters: dict) -> str | None:
        value = cache_key_fn(context, parameters)
        if value is not None:
            _drop_untrusted(context, value)
        return value

    return key


# The options every cached task of ours uses.
def cached(cache_key_fn: Callable[[Any, dict], str | None]) -> dict[str, Any]:
    return {"cache_key_fn": trusted(cache_key_fn), "result_serializer": JSON, "persist_result": True}


def run_cached(task, *args: Any, force: bool = False, still_valid: Callable[[Any], bool] = lambda _: True):
    """Run a cached task: (result, reused). A cached result whose files have vanished since (a
    deleted checkpoint or dataset version, a removed MLflow run) is computed again; `force` skips
    the cache."""
    state = task.with_options(refresh_cache=force)(*args, return_state=True)
    result = state.result()
    if state.name == "Cached" and not still_valid(result):
        state = task.with_options(refresh_cache=True)(*args, return_state=True)
        result = state.result()
    return result, state.name == "Cached"


__all__ = ["JSON", "cached", "is_trusted_record", "run_cached", "trusted"]
