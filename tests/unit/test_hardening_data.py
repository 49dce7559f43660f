"""Dataset hardening (issue 13): credentials in source URLs never shown or stored, decompression
bombs and unwritable or full storage as one line with nothing half-written, and a damaged dataset
version noticed (files and rows against its manifest; sha256 on request) and written again."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.helpers.ingest_helpers import Route, loopback_server, tree
from typer.testing import CliRunner

from vae.data import ingest as ingestion
from vae.data import sources
from vae.cli import app
from vae.config import DatasetConfig, PipelineConfig, RegistryConfig
from vae.data.ingest import ingest, ingest_report
from vae.data.datasets import dataset_problem, is_ingested, load_split, read_manifest
from vae.errors import DataError
from vae.data.urls import REDACTED, redact_text, redact_url

RNG = np.random.default_rng(13)
IMAGES = RNG.integers(0, 256, size=(30, 4, 4), dtype=np.uint8)  # (30, 4, 4)
SECRET = "s3cr3t-T0KEN"


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=IMAGES)
    return buffer.getvalue()


def _vae(home: Path, *args: str):
    return CliRunner().invoke(app, list(args), env={"VAE_HOME": str(home)})


# -- Item 5: credentials in source URLs.


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://host/data.npz?token=SECRET", "https://host/data.npz?token=REDACTED"),
        ("https://user:pass@host:8443/d.npz", "https://REDACTED@host:8443/d.npz"),
        ("https://ghp_abc@github.com/o/r/raw/d.npz", "https://REDACTED@github.com/o/r/raw/d.npz"),
        (
            "https://b.s3.amazonaws.com/d.npz?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F20&X-Amz-Signature=ab12&v=2",
            "https://b.s3.amazonaws.com/d.npz?X-Amz-Algorithm=AWS4&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&v=2",
        ),
        (
            "https://h/d.npz?sv=2024&sig=xyz&access_token=a&api_key=b&key=c&password=d&secret=e&page=3",
            "https://h/d.npz?sv=2024&sig=REDACTED&access_token=REDACTED&api_key=REDACTED&key=REDACTED"
            "&password=REDACTED&secret=REDACTED&page=3",
        ),
        ("https://h/d.npz#access_token=abc", "https://h/d.npz#access_token=REDACTED"),
        ("https://h/d.npz?a=1&b=2", "https://h/d.npz?a=1&b=2"),
        ("sklearn:digits", "sklearn:digits"),
        ("/data/we@ird?token=name.npz", "/data/we@ird?token=name.npz"),  # a local path is not a URL
        ("http://[::1/d.npz?token=abc", "http://[::1/d.npz?token=REDACTED"),  # does not parse: by pattern
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_hides_secrets_quoted_or_not():
    url = f"https://me:{SECRET}@h/d.npz?token=a%2Fb1234&page=1"
    text = f"cannot fetch {url}: server said '{SECRET}' and 'a/b1234'"
    assert redact_text(text, url) == (
        f"cannot fetch https://{REDACTED}@h/d.npz?token={REDACTED}&page=1: server said '{REDACTED}' and '{REDACTED}'"
    )


def test_url_secrets_are_not_stored_or_shown_but_are_used_to_fetch(tmp_path):
    home = tmp_path / "home"
    with loopback_server() as server:
        # The route has the secret in it: it answers only when the real URL is requested.
        server.routes[f"/d.npz?token={SECRET}&page=1"] = route = Route(_npz())
        url = f"{server.url}/d.npz?token={SECRET}&page=1"
        shown = f"{server.url}/d.npz?token={REDACTED}&page=1"
        result = _vae(home, "ingest", url, "--name", "d")
        assert result.exit_code == 0, result.output
        assert route.requests == 1
        listing = _vae(home, "datasets")
        listing_json = _vae(home, "datasets", "--json")
        missing = _vae(home, "ingest", url.replace("/d.npz", "/gone.npz"), "--name", "d")
    manifest = read_manifest(json.loads(listing_json.stdout)[0]["path"])
    assert manifest["source_uri"] == shown
    assert f"source        {shown}\n" in result.stdout
    assert listing.stdout.rstrip().endswith(shown)
    assert missing.exit_code == 1 and missing.stderr == (
        f"error: {shown.replace('/d.npz', '/gone.npz')}: HTTP 404 Not Found (expected 200 OK)\n"
    )
    for text in (
        result.output,
        listing.output,
        listing_json.output,
        missing.output,
        *(p.read_text() for p in home.rglob("manifest.json")),
    ):
        assert SECRET not in text


def test_a_url_named_dot_dot_downloads_inside_its_temporary_folder(tmp_path):
    with loopback_server() as server:
        server.routes["/%2e%2e"] = route = Route(_npz())  # its file name would be '..': the folder above
        ref = ingest(DatasetConfig(name="dots", source=f"{server.url}/%2e%2e"), root=tmp_path / "out")
    assert (
        route.requests == 1
        and read_manifest(ref.path)["rows"]["train"]
        + read_manifest(ref.path)["rows"]["validation"]
        + read_manifest(ref.path)["rows"]["test"]
        == IMAGES.shape[0]
    )


def test_pipelines_listing_and_serialised_settings_hide_url_secrets(tmp_path):
    url = f"https://user:pw-{SECRET}@h/d.npz?token={SECRET}"
    path = tmp_path / "pipelines.yaml"
    path.write_text(f"pipelines:\n  p:\n    dataset: {{name: d, source: '{url}'}}\n    registry: {{model_name: m}}\n")
    listing = CliRunner().invoke(app, ["pipelines", "--file", str(path)])
    assert listing.exit_code == 0 and SECRET not in listing.stdout
    assert f"dataset={redact_url(url)}" in listing.stdout
    settings = PipelineConfig(
        name="p", dataset=DatasetConfig(name="d", source=url), registry=RegistryConfig(model_name="m")
    )
    assert settings.dataset.source == url  # the real URL, to fetch
    assert settings.model_dump()["dataset"]["source"] == url
    assert settings.model_dump(mode="json")["dataset"]["source"] == redact_url(url)
    # What Prefect stores as the ingest flow run's parameters (`settings` travels there).
    from flows.ingest import ingest_flow

    stored = ingest_flow.serialize_parameters({"pipeline": "p", "pipelines_file": str(path), "settings": settings})
    assert SECRET not in json.dumps(stored)
    assert ingest_flow.validate_parameters({"settings": settings})["settings"].dataset.source == url


def test_mlflow_dataset_source_param_is_redacted(tmp_path, monkeypatch):
    from vae.registry import runs

    monkeypatch.setenv("VAE_HOME", str(tmp_path))
    url = f"https://h/d.npz?X-Amz-Signature={SECRET}"
    settings = PipelineConfig(
        name="p", dataset=DatasetConfig(name="d", source=url), registry=RegistryConfig(model_name="m")
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = runs.start_run(settings, {"version": "v1", "content_hash": "0" * 64}, uri)
    params = runs.client(uri).get_run(run_id).data.params
    assert params["dataset.source"] == f"https://h/d.npz?X-Amz-Signature={REDACTED}"
    assert not any(SECRET in value for value in params.values())


# -- Item 7: decompression bombs, unwritable or full storage.


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit gray pixels (no pixel data: Pillow refuses first)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("side", "pixels"), [(20000, 400000000), (10000, 100000000)])
def test_decompression_bomb_is_one_line_naming_the_file(tmp_path, side, pixels):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(IMAGES[0]).save(folder / "a.png")
    (folder / "b.png").write_bytes(_png_header(side, side))  # 20000x20000: Pillow's error; 10000x10000: its warning
    with pytest.raises(DataError) as error:
        ingest(DatasetConfig(name="bomb", source=str(folder)), root=tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"{folder / 'b.png'}: image too large: Image size ({pixels} pixels) exceeds limit")
    assert message.endswith(f"(expected at most {Image.MAX_IMAGE_PIXELS} pixels per image)") and "\n" not in message
    assert tree(tmp_path / "out") == {}


def _version_dir(home: Path) -> str:
    config = DatasetConfig(name="d", source="sklearn:digits")
    return str(home / "datasets" / "d" / ingestion.dataset_version(config, sources.sklearn_digits().content_hash))


def test_disk_full_during_ingest_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    before = tree(home)
    calls = []

    def full(self, table, *args, **kwargs):  # what pyarrow raises when the disk fills mid-file
        calls.append(1)
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    result = _vae(home, "ingest", "sklearn:digits", "--name", "d")
    assert calls and result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: {_version_dir(home)}: cannot write the dataset: No space left on device "
        "(expected a writable VAE_HOME with free space; nothing was written)\n"
    )
    assert tree(home) == before


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_vae_home_during_ingest_is_one_line(tmp_path, monkeypatch, code):
    home = tmp_path / "home"
    home.mkdir()
    refused = []
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # the kernel's answer on a read-only mount (root ignores chmod)
        if self == home / "datasets" / "d":  # VAE_HOME/datasets is made, then its d is refused
            real_mkdir(self.parent, exist_ok=True)
            refused.append(self)
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = _vae(home, "ingest", "sklearn:digits", "--name", "d")
    assert refused and result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: {refused[0]}: cannot write the dataset: {os.strerror(code)} "
        "(expected a writable VAE_HOME with free space; nothing was written)\n"
    )
    assert tree(home) == {}


def test_read_only_vae_home_for_real(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    if os.access(home, os.W_OK):  # root (with CAP_DAC_OVERRIDE) writes through a read-only mode
        home.chmod(0o755)
        pytest.skip("this user can write to a read-only folder")
    try:
        result = _vae(home, "ingest", "sklearn:digits", "--name", "d")
    finally:
        home.chmod(0o755)
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {home / 'datasets'}")
    assert result.stderr.endswith(
        ": cannot write the dataset: Permission denied (expected a writable VAE_HOME "
        "with free space; nothing was written)\n"
    )
    assert tree(home) == {}


# -- Item 9: a damaged version is noticed and written again.


def test_deleted_split_is_rewritten_not_trusted(tmp_path):
    home = tmp_path / "home"
    first = _vae(home, "ingest", "sklearn:digits", "--name", "d")
    assert first.exit_code == 0 and first.stdout.splitlines()[0].endswith("  written")
    path = _version_dir(home)
    test_split = load_split(path, "test")
    manifest = read_manifest(path)
    (Path(path) / "test.parquet").unlink()
    assert not is_ingested(path)  # the check the ingest flow makes before trusting a cached reference
    assert dataset_problem(path) == "test.parquet is missing"
    again = _vae(home, "ingest", "sklearn:digits", "--name", "d")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0] == f"d@{Path(path).name}  rewritten (test.parquet is missing)"
    assert is_ingested(path) and read_manifest(path)["files"] == manifest["files"]
    assert np.array_equal(load_split(path, "test")[0], test_split[0])
    assert sorted(p.name for p in (home / "datasets" / "d").iterdir()) == [Path(path).name]  # nothing left aside
    assert (
        _vae(home, "ingest", "sklearn:digits", "--name", "d")
        .stdout.splitlines()[0]
        .endswith("already ingested (unchanged)")
    )


def test_wrong_rows_and_old_manifests_are_checked(tmp_path):
    ref = ingest(DatasetConfig(name="d", source="sklearn:digits"), root=tmp_path)
    version = Path(ref.path)
    manifest = read_manifest(version)
    rows = manifest["rows"]
    shutil.copy(version / "train.parquet", version / "validation.parquet")
    size = (version / "train.parquet").stat().st_size
    assert dataset_problem(version) == (
        f"validation.parquet has {size} bytes (the manifest says {manifest['files']['validation.parquet']['bytes']})"
    )
    # A manifest from before the file list: judged by its row counts.
    del manifest["files"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    assert (
        dataset_problem(version)
        == f"validation.parquet has {rows['train']} rows (the manifest says {rows['validation']})"
    )
    (version / "manifest.json").write_text("{")
    assert dataset_problem(version).startswith("manifest.json is unreadable")
    ref2, status = ingest_report(DatasetConfig(name="d", source="sklearn:digits"), root=tmp_path)
    assert (ref2, status) == (ref, "rewritten (manifest.json is unreadable (JSONDecodeError))")
    assert (
        read_manifest(version)["rows"] == rows and load_split(version, "validation")[0].shape[0] == rows["validation"]
    )


def test_content_hash_is_checked_on_request(tmp_path):
    config = DatasetConfig(name="d", source="sklearn:digits")
    ref = ingest(config, root=tmp_path)
    train = Path(ref.path) / "train.parquet"
    good = train.read_bytes()
    manifest = read_manifest(ref.path)
    assert manifest["files"]["train.parquet"]["sha256"] == sources.hash_file(train)
    # Flip one byte of a page (same size, same footer): only the sha256 can tell.
    damaged = bytearray(good)
    damaged[len(good) // 3] ^= 0xFF
    train.write_bytes(bytes(damaged))
    assert ingest_report(config, root=tmp_path) == (ref, ingestion.UNCHANGED)
    assert dataset_problem(ref.path, content=True) == "train.parquet does not match its sha256 in the manifest"
    assert ingest_report(config, root=tmp_path, verify=True) == (
        ref,
        "rewritten (train.parquet does not match its sha256 in the manifest)",
    )
    assert train.read_bytes() == good


def test_resolving_a_dataset_by_name_skips_staging_folders_and_names_a_corrupt_manifest(tmp_path):
    """A killed ingest can leave its dot-folder staging with a manifest; it is not a version. A corrupt
    manifest was a raw JSONDecodeError: now the damaged-version line."""
    from vae.evaluate.evaluation import resolve_dataset

    real = ingest(DatasetConfig(name="digits", source="sklearn:digits"), root=tmp_path)
    staging = tmp_path / "digits" / ".0123456789ab-partial"
    staging.mkdir()
    (staging / "manifest.json").write_text(json.dumps({"created_at": "2999-01-01T00:00:00"}))
    assert resolve_dataset("digits", root=tmp_path) == real.path
    corrupt = tmp_path / "digits" / "fffffffffff0"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{not json")
    later = os.stat(real.path).st_mtime + 100
    os.utime(corrupt / "manifest.json", (later, later))
    assert resolve_dataset("digits", root=tmp_path) == real.path  # no creation time: not the newest
    shutil.rmtree(real.path)
    with pytest.raises(DataError, match=r"fffffffffff0: damaged dataset version: manifest.json is unreadable"):
        resolve_dataset("digits", root=tmp_path)
