"""Content hashes remembered by file identity (vae.data.sources.memo): an unchanged source is not read
again, a changed one always is, even rewritten to the same size with its mtime put back, and a file
that may still change within a clock tick is never remembered."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from vae.data import sources
from vae.data.sources import memo
from vae.data.sources.sklearn_data import bundled_files


def _count(calls: list, digest: str):
    def compute() -> str:
        calls.append(1)
        return digest

    return compute


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (the tests cannot wait out a clock tick on every file)."""
    monkeypatch.setattr(memo, "RACY_SECONDS", 0.0)


def test_an_unchanged_file_is_hashed_once_and_a_rewritten_one_again(tmp_path, settled):
    data, store = tmp_path / "images.npy", tmp_path / "memo.json"
    data.write_bytes(b"\x01" * 64)
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    assert sources.content_hash(str(data), store) == expected  # computed, then remembered
    calls: list = []
    assert memo.remembered(store, ["file"], [data], _count(calls, "other")) == expected and calls == []

    # The same size, the mtime put back: the ctime still moves, so the identity does too.
    stat = data.stat()
    data.write_bytes(b"\x02" * 64)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sources.content_hash(str(data), store) == hashlib.sha256(b"\x02" * 64).hexdigest()
    assert len(json.loads(store.read_text())) == 2


def test_a_file_that_may_still_change_is_not_remembered(tmp_path):
    data, store = tmp_path / "images.npy", tmp_path / "memo.json"
    data.write_bytes(b"\x01" * 64)  # written just now: within RACY_SECONDS
    calls: list = []
    for _ in range(2):
        memo.remembered(store, ["file"], [data], _count(calls, "digest"))
    assert calls == [1, 1] and not store.exists()


def test_a_folder_is_hashed_again_when_a_file_is_added(tmp_path, settled):
    folder, store = tmp_path / "images", tmp_path / "memo.json"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "one.png").write_bytes(b"one")
    first = sources.content_hash(str(folder), store)
    assert sources.content_hash(str(folder), store) == first == sources.content_hash(str(folder))
    (folder / "a" / "two.png").write_bytes(b"two")
    assert sources.content_hash(str(folder), store) == sources.content_hash(str(folder)) != first


def test_sklearn_digits_from_the_memo_is_the_hash_of_its_arrays(tmp_path):
    store = tmp_path / "memo.json"
    how, files = bundled_files("sklearn:digits")
    assert files and all(path.stat().st_size > 0 for path in files)
    computed = sources.sklearn_digits().content_hash
    assert sources.content_hash("sklearn:digits", store) == computed  # the bundled file is years old: remembered
    calls: list = []
    assert memo.remembered(store, how, files, _count(calls, "other")) == computed and calls == []


@pytest.mark.parametrize("planted", ["not json", "[1, 2]", '{"key": 3}'])
def test_a_memo_that_cannot_be_read_is_treated_as_empty(tmp_path, settled, planted):
    data, store = tmp_path / "images.npy", tmp_path / "memo.json"
    data.write_bytes(b"\x03" * 8)
    store.write_text(planted)
    assert sources.content_hash(str(data), store) == hashlib.sha256(b"\x03" * 8).hexdigest()
