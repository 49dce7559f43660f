"""Keyed digests for state that a library deserialises with pickle (Ray Tune's experiment).

Tune keeps a search's resumable state as pickles (`tuner.pkl`, `trainable.pkl`, the searcher's and
the trials' state); loading one runs whatever code it names. Anyone who can write into VAE_HOME (a
shared volume, a folder copied from a colleague, a restored backup) could plant one for the next
user who resumes. So the project signs the state it writes and checks it before anything loads it:

    tag = HMAC-SHA256(key, canonical JSON of [(relative path, size, SHA-256 of contents), …])

over every file under the state folder (RFC 2104). The key is 32 random bytes kept outside
VAE_HOME (`$VAE_STATE_KEY_FILE`, default `$XDG_CONFIG_HOME/vae/state.key`), mode 0600, created on
first use. A missing or wrong tag, a file added, changed or removed after signing, a symbolic link,
or a file or folder owned by someone else or writable by group/others is refused in one line
before the state is opened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path

from vae.errors import VAEError
from vae.paths import vae_home

KEY_BYTES = 32
SIGNATURE_VERSION = 1


class StateIntegrityError(VAEError):
    """State on disk that this user's key did not sign (or that others could have changed since)."""


def key_file() -> Path:
    """Where this user's state key lives: $VAE_STATE_KEY_FILE, else $XDG_CONFIG_HOME/vae/state.key."""
    if os.environ.get("VAE_STATE_KEY_FILE"):
        return Path(os.environ["VAE_STATE_KEY_FILE"]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "vae" / "state.key"


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def load_key(*, create: bool) -> bytes:
    """The user's state key; made (0600, in a 0700 folder) when `create` and there is none yet."""
    path = key_file()
    if _within(path, vae_home()):
        raise StateIntegrityError(
            f"{path}: the state key must live outside VAE_HOME ({vae_home()}), where planted state cannot reach it"
        )
    if not path.exists():
        if not create:
            raise StateIntegrityError(f"refusing to resume: no state key at {path} (this user never signed that state)")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(handle, "wb") as stream:
                stream.write(secrets.token_bytes(KEY_BYTES))
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StateIntegrityError(
            f"{path}: the state key must be owned by this user with mode 0600 (it is {stat.filemode(info.st_mode)})"
        )
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise StateIntegrityError(f"{path}: the state key is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def _check_owner(path: Path, info: os.stat_result, root: Path) -> None:
    if info.st_uid != os.getuid():
        raise StateIntegrityError(f"refusing to resume: {path} is owned by uid {info.st_uid}, not this user ({root})")
    if info.st_mode & 0o022:
        raise StateIntegrityError(
            f"refusing to resume: {path} is writable by others ({stat.filemode(info.st_mode)}), so it may not "
            f"have been written by this user ({root})"
        )


def _digests(root: Path) -> list[list]:
    """[(relative path, size, SHA-256)] of every file under `root`, sorted; refuses links and others' files."""
    rows = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        _check_owner(here, here.lstat(), root)
        for name in sorted(dirs + files):
            path = here / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise StateIntegrityError(f"refusing to resume: {path} is a symbolic link ({root})")
            _check_owner(path, info, root)
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                rows.append([path.relative_to(root).as_posix(), info.st_size, digest])
    return sorted(rows)


def _tag(key: bytes, rows: list[list]) -> str:
    body = json.dumps({"version": SIGNATURE_VERSION, "files": rows}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sign_tree(root: str | Path, signature: str | Path) -> None:
    """Sign every file under `root` with this user's key; the tag goes to `signature` (atomically)."""
    root, signature = Path(root), Path(signature)
    if not root.is_dir():
        return
    rows = _digests(root)
    record = {"version": SIGNATURE_VERSION, "files": rows, "hmac": _tag(load_key(create=True), rows)}
    handle, temporary = tempfile.mkstemp(prefix=f".{signature.name}-", dir=signature.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(record, stream)
    os.replace(temporary, signature)


def verify_tree(root: str | Path, signature: str | Path) -> None:
    """Raise StateIntegrityError unless every file under `root` is as `signature` says this user signed it."""
    root, signature = Path(root), Path(signature)
    if not signature.is_file():
        raise StateIntegrityError(
            f"refusing to resume: {root} has no signature {signature.name} (not written by this user, or its "
            "search was killed before it could sign its state); start a new search"
        )
    _check_owner(signature, signature.lstat(), root)
    try:
        record = json.loads(signature.read_text())
        claimed = str(record["hmac"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StateIntegrityError(f"refusing to resume: {signature} is not a signature this project wrote") from None
    rows = _digests(root) if root.is_dir() else []
    if not hmac.compare_digest(_tag(load_key(create=False), rows), claimed):
        changed = _first_difference(root, record.get("files"), rows)
        raise StateIntegrityError(
            f"refusing to resume: {changed} was not written by this user (added, changed or removed after this "
            "user signed the state); start a new search"
        )


def _first_difference(root: Path, signed, found: list[list]) -> str:
    """The first file whose digest differs between the signed list and what is on disk (for the message)."""
    signed = {row[0]: row for row in signed if isinstance(row, list) and row} if isinstance(signed, list) else {}
    for row in found:
        if signed.get(row[0]) != row:
            return str(root / row[0])
    missing = sorted(set(map(str, signed)) - {row[0] for row in found})
    return str(root / missing[0]) if missing else str(root)
