"""Shared by the ingestion tests: IDX writers, a snapshot of a directory tree, a loopback HTTP server."""

from __future__ import annotations

import gzip
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes: magic 0x0000 08 <ndim> (unsigned bytes), big-endian sizes, then the data."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, magic: int | None = None, cut: int = 0) -> Path:
    """Write an IDX file (gzipped if gz), dropping the last `cut` bytes of the uncompressed data."""
    data = idx_bytes(array, magic)
    data = data[: len(data) - cut]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_idx_folder(
    folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None, *, gz: bool = True
) -> Path:
    """MNIST-style files: train-/t10k- images (N, H, W) and labels (N,)."""
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", train[0], gz=gz)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", train[1], gz=gz)
    if test is not None:
        write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", test[0], gz=gz)
        write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", test[1], gz=gz)
    return folder


def write_big_idx(folder: Path, rows: int) -> int:
    """An uncompressed IDX pair of `rows` 28x28 images (random pixels, repeated in 8192-image blocks),
    written block by block so that even gigabytes never sit in memory; returns the image file's size.
    Used by the memory test and bench/bench_ingest.py."""
    folder.mkdir(parents=True, exist_ok=True)
    block = np.random.default_rng(0).integers(0, 256, size=(8192, 28, 28), dtype=np.uint8)
    with open(folder / "train-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, rows, 28, 28))
        for start in range(0, rows, 8192):
            f.write(block[: min(8192, rows - start)].tobytes())
    with open(folder / "train-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, rows) + (np.arange(rows) % 10).astype(np.uint8).tobytes())
    return (folder / "train-images-idx3-ubyte").stat().st_size


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root, files with (size, mtime_ns): equal before and after means nothing was touched.

    Folders are listed without their mtime: a temporary directory made and removed beside a version
    changes its parent's mtime and nothing else.
    """
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
        for p in sorted(root.rglob("*"))
    }


def sorted_rows(images: np.ndarray, labels: np.ndarray | None = None) -> list[bytes]:
    """Rows (with their label) as a sorted list of bytes: compares splits as multisets."""
    flat = np.ascontiguousarray(images.reshape(images.shape[0], -1))
    keys = [row.tobytes() for row in flat]
    if labels is not None:
        keys = [k + int(label).to_bytes(8, "little", signed=True) for k, label in zip(keys, labels)]
    return sorted(keys)


@dataclass
class Route:
    """A loopback server's answer for one path: a body, or failures first, or a delay."""

    body: bytes = b""
    status: int = 200
    fail_first: int = 0  # answer 503 to this many requests, then the body
    delay: float = 0.0  # seconds before answering (a timeout test)
    requests: int = 0


@dataclass
class Loopback:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)


@contextmanager
def loopback_server():
    """A real HTTP server on 127.0.0.1 in a thread; tests add routes to its `routes`."""
    routes: dict[str, Route] = {}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route.requests += 1
            if route.delay:
                release.wait(route.delay)
            if route.requests <= route.fail_first:
                self.send_error(503)
                return
            if route.status != 200:
                self.send_error(route.status)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Loopback(f"http://127.0.0.1:{server.server_address[1]}", routes)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
