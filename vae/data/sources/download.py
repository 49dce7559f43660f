"""URL sources: an http(s) URL is streamed to a temporary file, hashed as it arrives, then read as a file.

Messages name the URL with its credentials redacted (vae.data.urls); the real URL goes only to the
request. A failure is a DownloadError, `transient` where a retry may help (timeouts, 5xx, dropped
connections); a full or read-only temporary folder is a StorageError, not a network failure.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import vae
from vae.paths import inside
from vae.errors import DataError, StorageError
from vae.data.urls import redact_text, redact_url
from vae.data.sources.base import HASH_BLOCK, error_line

DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download fails


class DownloadError(DataError):
    """A URL could not be fetched; `transient` failures (timeouts, 5xx) are worth a retry."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


# A local write failed (the download's folder is full or read-only), not the network.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def download(url: str, directory: Path, *, timeout: float = DOWNLOAD_TIMEOUT) -> tuple[Path, str]:
    """Stream a URL to a file in directory, hashing as it arrives; returns the file and its sha256.

    Messages name the URL with its credentials redacted; the real URL goes only to the request.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    target = inside(directory, name if name not in ("", ".", "..") else "download")
    shown = redact_url(url)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": f"vae/{vae.__version__}"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            while block := response.read(HASH_BLOCK):
                digest.update(block)
                out.write(block)
                received += len(block)
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise DownloadError(
            f"{shown}: HTTP {exc.code} {redact_text(str(exc.reason), url)} (expected 200 OK)", transient
        ) from None
    except (TimeoutError, socket.timeout):
        raise DownloadError(
            f"{shown}: timed out after {timeout:g} s without data (expected a response)", True
        ) from None
    except http.client.IncompleteRead as exc:
        got = received + len(exc.partial)
        expected = got + (exc.expected or 0)
        raise DownloadError(f"{shown}: download ended after {got} bytes (expected {expected})", True) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise DownloadError(
                f"{shown}: timed out after {timeout:g} s without data (expected a response)", True
            ) from None
        raise DownloadError(f"{shown}: cannot download: {redact_text(str(exc.reason), url)}", True) from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise DownloadError(f"{shown}: cannot download: {redact_text(error_line(exc), url)}", True) from None
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise StorageError(
                f"{exc.filename or target}: cannot write the download of {shown}: "
                f"{os.strerror(exc.errno)} (expected a writable temporary folder with free space)"
            ) from None
        raise DownloadError(
            f"{shown}: cannot download: {redact_text(exc.strerror or error_line(exc), url)}", True
        ) from None
    return target, digest.hexdigest()
