"""Keyed digests of pickled state (vae.integrity): what the user signed verifies; anything planted,
changed, removed, linked, writable by others or signed with another key is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from vae import integrity
from vae.integrity import StateIntegrityError


class _Payload:
    """A pickle that runs code when loaded: creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture()
def state(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("VAE_STATE_KEY_FILE", str(tmp_path / "keys" / "state.key"))
    root = tmp_path / "search" / "ray"
    (root / "trial_1").mkdir(parents=True)
    (root / "tuner.pkl").write_bytes(pickle.dumps({"a": 1}))
    (root / "trial_1" / "params.pkl").write_bytes(pickle.dumps([1, 2]))
    (root / "experiment_state.json").write_text("{}")
    signature = root.parent / "state.sig"
    integrity.sign_tree(root, signature)
    return root, signature


def test_signed_state_verifies_and_the_key_is_private(state):
    root, signature = state
    integrity.verify_tree(root, signature)
    key = integrity.key_file()
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == integrity.KEY_BYTES


@pytest.mark.parametrize("change", ["overwrite", "plant", "remove", "append"])
def test_a_changed_added_or_removed_file_is_refused(state, tmp_path, change):
    root, signature = state
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Payload(marker))
    target = {"overwrite": "tuner.pkl", "plant": "trial_1/searcher.pkl", "remove": "tuner.pkl"}.get(change, "tuner.pkl")
    if change == "remove":
        (root / target).unlink()
    elif change == "append":
        (root / target).write_bytes((root / target).read_bytes() + b".")
    else:
        (root / target).write_bytes(payload)
    with pytest.raises(StateIntegrityError, match=r"refusing to resume: .*" + target.replace("/", ".")):
        integrity.verify_tree(root, signature)
    assert not marker.exists()


def test_a_missing_or_forged_signature_is_refused(state):
    root, signature = state
    signature.write_text('{"version": 1, "files": [], "hmac": "00"}')
    with pytest.raises(StateIntegrityError, match="not written by this user"):
        integrity.verify_tree(root, signature)
    signature.write_text("not json")
    with pytest.raises(StateIntegrityError, match="not a signature this project wrote"):
        integrity.verify_tree(root, signature)
    signature.unlink()
    with pytest.raises(StateIntegrityError, match="has no signature state.sig"):
        integrity.verify_tree(root, signature)


def test_state_signed_with_another_key_is_refused(state, tmp_path, monkeypatch):
    root, signature = state
    monkeypatch.setenv("VAE_STATE_KEY_FILE", str(tmp_path / "other" / "state.key"))
    integrity.load_key(create=True)  # a colleague's key: the same files, a different tag
    with pytest.raises(StateIntegrityError, match="not written by this user"):
        integrity.verify_tree(root, signature)


def test_without_a_key_nothing_verifies(state, tmp_path, monkeypatch):
    root, signature = state
    monkeypatch.setenv("VAE_STATE_KEY_FILE", str(tmp_path / "nobody" / "state.key"))
    with pytest.raises(StateIntegrityError, match="no state key"):
        integrity.verify_tree(root, signature)


@pytest.mark.parametrize("where", ["tuner.pkl", "trial_1", "."])
def test_state_writable_by_others_is_refused(state, where):
    root, signature = state
    path = root / where
    path.chmod(path.stat().st_mode | 0o002)
    with pytest.raises(StateIntegrityError, match="writable by others"):
        integrity.verify_tree(root, signature)


def test_a_symbolic_link_is_refused(state, tmp_path):
    root, signature = state
    (tmp_path / "elsewhere.pkl").write_bytes(b"x")
    (root / "trial_1" / "linked.pkl").symlink_to(tmp_path / "elsewhere.pkl")
    with pytest.raises(StateIntegrityError, match="symbolic link"):
        integrity.verify_tree(root, signature)


def test_the_key_must_be_private_and_outside_vae_home(tmp_path, monkeypatch):
    key = tmp_path / "keys" / "state.key"
    monkeypatch.setenv("VAE_STATE_KEY_FILE", str(key))
    integrity.load_key(create=True)
    key.chmod(0o644)
    with pytest.raises(StateIntegrityError, match="mode 0600"):
        integrity.load_key(create=False)
    monkeypatch.setenv("VAE_HOME", str(tmp_path / "keys"))
    with pytest.raises(StateIntegrityError, match="outside VAE_HOME"):
        integrity.load_key(create=True)
