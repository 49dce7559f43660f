"""CIFAR-10/100 sources in their binary format: the official train/test split, (3, 32, 32) uint8 images.

The binary version (https://www.cs.toronto.edu/~kriz/cifar.html) is a run of fixed-size records:
  CIFAR-10:  1 label byte (0..9)                        + 3072 pixel bytes   = 3073 bytes
  CIFAR-100: 1 coarse label byte (0..19) + 1 fine (0..99) + 3072 pixel bytes = 3074 bytes
The pixels are channel-major: 1024 red bytes, 1024 green, 1024 blue, each 32 rows of 32, so a
record's pixels are one (3, 32, 32) uint8 image as it is. Files: cifar-10-batches-bin/
data_batch_1.bin .. data_batch_5.bin (train, in that order) and test_batch.bin; cifar-100-binary/
train.bin and test.bin. They are read from the .tar.gz by streaming (nothing extracted to disk) or
from the extracted folder; every file's size is checked against whole records before its labels
are used. The "python version" is pickles, which can run code when loaded: it is refused by its
names, never opened with pickle. open_cifar turns what read_cifar reads into a Source of parts
'train' and 'test'; an extracted folder's content hash covers every file under it (cifar_files).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vae.errors import DataError
from vae.data.sources.base import Source, from_arrays

PIXEL_BYTES = 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class _Variant:
    name: str  # "CIFAR-10" or "CIFAR-100"
    archive: str  # the binary version's download
    folder: str  # its top folder
    label_bytes: int
    classes: tuple[int, ...]  # label count per label byte: (10,) or (20, 100)
    train: tuple[str, ...]
    test: str
    class_names: str  # text file of the (fine) label names
    python_folder: str  # the pickled version's top folder, refused

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + PIXEL_BYTES


CIFAR10 = _Variant(
    "CIFAR-10",
    "cifar-10-binary.tar.gz",
    "cifar-10-batches-bin",
    1,
    (10,),
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test_batch.bin",
    "batches.meta.txt",
    "cifar-10-batches-py",
)
CIFAR100 = _Variant(
    "CIFAR-100",
    "cifar-100-binary.tar.gz",
    "cifar-100-binary",
    2,
    (20, 100),
    ("train.bin",),
    "test.bin",
    "fine_label_names.txt",
    "cifar-100-python",
)
VARIANTS = (CIFAR10, CIFAR100)

# Names only the pickled ("python") version uses: batch files without .bin, its meta pickles, its folders.
_PYTHON_NAMES = re.compile(r"^(data_batch_[1-5]|test_batch|batches\.meta)$")
_PYTHON_ARCHIVE = re.compile(r"^cifar-(10|100)-python\.tar\.gz$", re.IGNORECASE)


@dataclass(frozen=True)
class CifarData:
    """The official split of CIFAR-10 or CIFAR-100, images (N, 3, 32, 32) uint8 and labels (N,) int64."""

    variant: str  # "CIFAR-10" or "CIFAR-100"
    train_images: np.ndarray  # (N_train, 3, 32, 32) uint8
    train_labels: np.ndarray  # (N_train,) int64; CIFAR-100: the fine label (0..99)
    test_images: np.ndarray  # (N_test, 3, 32, 32) uint8
    test_labels: np.ndarray  # (N_test,) int64
    train_coarse_labels: np.ndarray | None = None  # CIFAR-100 only: (N_train,) int64, 0..19
    test_coarse_labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None  # label names, where the source ships them


def _python_refusal(uri: str, variant: _Variant) -> DataError:
    return DataError(
        f"{uri}: the {variant.name} 'python version' is pickled and pickles are not loaded "
        f"(expected the binary version, {variant.archive}, from {CIFAR_URL})"
    )


def _variant_of_python(names: list[str]) -> _Variant:
    return CIFAR100 if any("cifar-100" in n or n.rsplit("/", 1)[-1] in ("meta", "train") for n in names) else CIFAR10


def _is_python_name(name: str) -> bool:
    """A path inside an archive or folder that only the pickled version has."""
    parts = name.strip("/").split("/")
    return any(p in (CIFAR10.python_folder, CIFAR100.python_folder) for p in parts) or bool(
        _PYTHON_NAMES.match(parts[-1])
    )


def _parse_batch(data: bytes, uri: str, variant: _Variant) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images (n, 3, 32, 32), fine labels (n,), coarse labels (n,) or None) of one batch's bytes."""
    record = variant.record_bytes
    _check_size(len(data), uri, variant)
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)  # (n, record)
    labels = rows[:, : variant.label_bytes].astype(np.int64)  # (n, label_bytes)
    for column, count in enumerate(variant.classes):
        bad = np.flatnonzero(labels[:, column] >= count)
        if bad.size:
            what = "label" if variant.label_bytes == 1 else ("coarse label", "fine label")[column]
            raise DataError(
                f"{uri}: record {int(bad[0])} has {what} {int(labels[bad[0], column])} "
                f"(expected 0..{count - 1}: is this a {variant.name} binary batch?)"
            )
    images = rows[:, variant.label_bytes :].reshape(-1, *IMAGE_SHAPE)  # (n, 3, 32, 32), channel-major as stored
    coarse = labels[:, 0] if variant.label_bytes == 2 else None  # (n,)
    return images, labels[:, -1], coarse


def _check_size(size: int, uri: str, variant: _Variant) -> None:
    record = variant.record_bytes
    if size == 0 or size % record:
        whole = size // record
        plural = "s" if whole > 1 else ""
        options = (
            f"{record} bytes for 1 record"
            if whole == 0
            else (f"{whole * record} bytes for {whole} record{plural} or {(whole + 1) * record} for {whole + 1}")
        )
        raise DataError(
            f"{uri}: truncated {variant.name} batch: {size} bytes is not a whole number of {record}-byte records "
            f"({variant.label_bytes} label byte{'s' if variant.label_bytes > 1 else ''} + {PIXEL_BYTES} pixel bytes; "
            f"expected a multiple of {record}: {options})"
        )


def _names(text: bytes) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip())


def _assemble(batches: dict[str, bytes], uri_of: dict[str, str], variant: _Variant, names: bytes | None) -> CifarData:
    """Parse the train batches in order and the test batch; every size is checked before any is parsed."""
    for name in (*variant.train, variant.test):
        _check_size(len(batches[name]), uri_of[name], variant)
    train = [_parse_batch(batches[name], uri_of[name], variant) for name in variant.train]
    test_images, test_labels, test_coarse = _parse_batch(batches[variant.test], uri_of[variant.test], variant)
    coarse = variant.label_bytes == 2
    return CifarData(
        variant=variant.name,
        train_images=np.concatenate([t[0] for t in train]),  # (N_train, 3, 32, 32)
        train_labels=np.concatenate([t[1] for t in train]),  # (N_train,)
        test_images=test_images.copy(),  # (N_test, 3, 32, 32), owning its memory
        test_labels=test_labels,
        train_coarse_labels=np.concatenate([t[2] for t in train]) if coarse else None,
        test_coarse_labels=test_coarse,
        classes=_names(names) if names else None,
    )


def _missing(where: str, variant: _Variant, found: set[str]) -> DataError | None:
    needed = (*variant.train, variant.test)
    absent = [n for n in needed if n not in found]
    if not absent:
        return None
    return DataError(
        f"{where}: {variant.name} binary batch {absent[0]} is missing "
        f"(expected {', '.join(needed)}, as in {variant.archive})"
    )


def _variant_of(found: set[str]) -> _Variant | None:
    for variant in VARIANTS:
        if found & {*variant.train, variant.test}:
            return variant
    return None


# -- The .tar.gz, streamed member by member.


def _read_archive(path: Path, uri: str) -> CifarData:
    if _PYTHON_ARCHIVE.match(path.name):
        raise _python_refusal(uri, CIFAR100 if "100" in path.name else CIFAR10)
    wanted = {name for v in VARIANTS for name in (*v.train, v.test, v.class_names)}
    found: dict[str, bytes] = {}
    uri_of: dict[str, str] = {}
    seen: list[str] = []
    try:
        with tarfile.open(path, mode="r|*") as archive:  # a stream: one pass, nothing written to disk
            for member in archive:
                seen.append(member.name)
                if _is_python_name(member.name):
                    raise _python_refusal(uri, _variant_of_python([member.name]))
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or base not in wanted:
                    continue
                if base in found:
                    raise DataError(f"{uri}: two members named {base} ({uri_of[base]} and {member.name}; expected one)")
                uri_of[base] = f"{uri}[{member.name}]"
                variant = next(v for v in VARIANTS if base in (*v.train, v.test, v.class_names))
                if base != variant.class_names:
                    _check_size(member.size, uri_of[base], variant)  # from the header, before reading
                stream = archive.extractfile(member)
                data = stream.read() if stream else b""
                if len(data) != member.size:
                    raise DataError(f"{uri_of[base]}: {len(data)} bytes (expected {member.size}, as its header says)")
                found[base] = data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DataError(f"{uri}: truncated or corrupt archive: {text} (expected a complete .tar.gz)") from None
    variant = _variant_of(set(found))
    if variant is None:
        raise DataError(
            f"{uri}: no CIFAR batches among its {len(seen)} members "
            f"(expected {CIFAR10.archive} or {CIFAR100.archive} from {CIFAR_URL})"
        )
    error = _missing(uri, variant, set(found))
    if error:
        raise error
    return _assemble(found, uri_of, variant, found.get(variant.class_names))


# -- The extracted folder: the batches folder itself, or the folder holding it.


def _batch_folder(folder: Path) -> Path:
    for variant in VARIANTS:
        if (folder / variant.folder).is_dir():
            return folder / variant.folder
        if (folder / variant.python_folder).is_dir():
            raise _python_refusal(str(folder / variant.python_folder), variant)
    return folder


def _read_folder(folder: Path, uri: str) -> CifarData:
    folder = _batch_folder(folder)
    try:
        present = {p.name for p in folder.iterdir() if p.is_file()}
    except OSError as exc:
        raise DataError(f"{folder}: cannot read: {exc.strerror or exc}") from None
    variant = _variant_of(present)
    if variant is None:
        pickled = sorted(n for n in present if _PYTHON_NAMES.match(n))
        if pickled or {"meta", "train", "test"} <= present:
            raise _python_refusal(str(folder / (pickled[0] if pickled else "meta")), CIFAR10 if pickled else CIFAR100)
        raise DataError(
            f"{folder}: no CIFAR batches (expected {CIFAR10.folder}/ with {', '.join(CIFAR10.train)}, "
            f"{CIFAR10.test}, or {CIFAR100.folder}/ with train.bin, test.bin)"
        )
    error = _missing(str(folder), variant, present)
    if error:
        raise error
    paths = {name: folder / name for name in (*variant.train, variant.test)}
    try:
        for path in paths.values():  # sizes first: a truncated file fails before anything is read
            _check_size(path.stat().st_size, str(path), variant)
        batches = {name: path.read_bytes() for name, path in paths.items()}
        names_path = folder / variant.class_names
        names = names_path.read_bytes() if names_path.is_file() else None
    except OSError as exc:
        raise DataError(f"{exc.filename or folder}: cannot read: {exc.strerror or exc}") from None
    return _assemble(batches, {name: str(path) for name, path in paths.items()}, variant, names)


def read_cifar(path: str | Path, uri: str | None = None) -> CifarData:
    """CIFAR-10 or -100 from the binary .tar.gz or its extracted folder; uri names it in errors (default: path)."""
    path = Path(path)
    uri = uri or str(path)
    if path.is_dir():
        return _read_folder(path, uri)
    if not path.is_file():
        raise DataError(f"{uri}: no such file or directory (expected {CIFAR10.archive} or its extracted folder)")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise DataError(f"{uri}: cannot read: {exc.strerror or exc}") from None
    pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # opcode PROTO 2..5
    if _is_python_name(path.name) or pickled:
        raise _python_refusal(uri, CIFAR100 if path.name in ("train", "test", "meta") else CIFAR10)
    if path.name in (*CIFAR10.train, CIFAR10.test, *CIFAR100.train, CIFAR100.test):
        raise DataError(
            f"{uri}: a single CIFAR batch (expected the folder that holds all the batches, or the .tar.gz, "
            "for the official train/test split)"
        )
    return _read_archive(path, uri)


def looks_like_cifar(path: str | Path) -> bool:
    """Whether a path is a CIFAR download (binary or pickled), by names only: route it to read_cifar."""
    path = Path(path)
    if path.is_dir():
        try:
            names = {p.name for p in path.iterdir()}
        except OSError:
            return False
        folders = {v.folder for v in VARIANTS} | {v.python_folder for v in VARIANTS}
        batches = {*CIFAR10.train, CIFAR10.test, "data_batch_1", "batches.meta"}
        return bool(names & (folders | batches)) or {"train.bin", "test.bin"} <= names
    name = path.name.lower()
    if re.match(r"^cifar-(10|100)-(binary|python)\.tar\.gz$", name) or _is_python_name(path.name):
        return True
    if not name.endswith((".tar.gz", ".tgz", ".tar")):
        return False
    try:
        with tarfile.open(path, mode="r|*") as archive:  # the first members' names only
            for i, member in enumerate(archive):
                top = member.name.strip("/").split("/")[0]
                if top in {v.folder for v in VARIANTS} | {v.python_folder for v in VARIANTS}:
                    return True
                if i >= 2:
                    return False
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        return False
    return False


# -- As a source: the official train/test split; the pickled version is refused above.


def cifar_files(folder: Path) -> list[Path]:
    """The files a CIFAR folder's content hash covers: every file under it, in a fixed order."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def open_cifar(path: Path, uri: str) -> Source:
    """CIFAR-10/100 binary as parts 'train' and 'test' of (3, 32, 32) uint8 images with their (fine) labels."""
    data = read_cifar(path, uri)
    train = from_arrays(data.train_images, data.train_labels, f"{uri}[train]", "")
    test = from_arrays(data.test_images, data.test_labels, f"{uri}[test]", "")
    parts = (replace(train.parts[0], name="train"), replace(test.parts[0], name="test"))
    return Source(uri, "cifar", "", IMAGE_SHAPE, np.dtype(np.uint8), True, parts, 255.0, data.classes, "CHW")
