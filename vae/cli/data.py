"""`vae ingest` and `vae datasets`: dataset commands, registered on the main `vae` app.

Both call the library directly (no Prefect server to start): ingesting a file takes seconds, and
`vae run` goes through the ingestion flow, whose task is cached on the source's content hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from vae.cli.app import fail, quiet_logs, app
from vae.errors import VAEError
from vae.data.urls import redact_url

# DatasetConfig field → the command-line spelling used in messages.
_OPTION_NAMES = {
    "name": "--name",
    "source": "SOURCE",
    "sha256": "--sha256",
    "split": "--split",
    "split_seed": "--seed",
    "validation_fraction": "--validation-fraction",
    "test_fraction": "--test-fraction",
    "max_value": "--max-value",
    "binarize_test_seed": "--binarize-test-seed",
}


def _dataset_config(**fields):
    """A DatasetConfig from command-line values; a bad value is one line naming the option."""
    from pydantic import ValidationError

    from vae.config import DatasetConfig

    try:
        return DatasetConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        option = _OPTION_NAMES.get(str(error["loc"][0]), str(error["loc"][0])) if error["loc"] else "options"
        shown = redact_url(error["input"]) if isinstance(error["input"], str) else error["input"]
        message = error["msg"][0].lower() + error["msg"][1:]
        if message.startswith("value error, "):  # our own validators already say what was expected
            fail(f"{option} {shown!r}: {message.removeprefix('value error, ')}")
        fail(f"{option} {shown!r}: expected: {message}")


def _shape(manifest: dict) -> str:
    return "x".join(str(s) for s in manifest.get("shape", []))


@app.command(rich_help_panel="Data")
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="IDX folder or file, .npz, .npy, .csv, .parquet, image folder, "
            "http(s) URL of a file, or sklearn:digits."
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name (a folder under VAE_HOME/datasets).")],
    sha256: Annotated[Optional[str], typer.Option(help="Expected content hash (a file's sha256).")] = None,
    split: Annotated[str, typer.Option(help="auto, random or official (the source's own test file).")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Split seed.")] = 0,
    validation_fraction: Annotated[
        Optional[float],
        typer.Option(
            help="Share of non-test rows for validation (default 0.1; official split: as many rows as the test set).",
        ),
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of rows for test (random split).")] = 0.2,
    max_value: Annotated[
        Optional[float],
        typer.Option(help="Declared pixel maximum (default 255 for integer pixels, 1.0 for float pixels)."),
    ] = None,
    binarize_test_seed: Annotated[
        Optional[int], typer.Option(help="Binarise the test split once with this seed (stored as 0 / max value).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds without data before a download fails.")] = 60.0,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also compare a stored version's files with the sha256 in its manifest (rewrite it if they differ).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs.")] = False,
) -> None:
    """Convert a dataset source to versioned Parquet splits under VAE_HOME/datasets.

    A stored version is reused only when every file its manifest lists is there with its rows;
    a damaged one is written again.
    """
    quiet_logs(verbose)
    config = _dataset_config(
        name=name,
        source=source,
        sha256=sha256,
        split=split,
        split_seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        max_value=max_value,
        binarize_test_seed=binarize_test_seed,
    )
    try:
        from vae.data.datasets import read_manifest
        from vae.data.ingest import UNCHANGED, ingest_report

        ref, status = ingest_report(config, timeout=timeout, verify=verify)
        manifest = read_manifest(ref.path)
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({**manifest, "path": ref.path}))
        return
    rows = manifest["rows"]
    typer.echo(f"{ref.name}@{ref.version}  {'already ingested (unchanged)' if status == UNCHANGED else status}")
    typer.echo(
        f"rows          train {rows['train']}  validation {rows['validation']}  test {rows['test']}"
        f"  ({manifest['split']} split, seed {manifest['split_seed']})"
    )
    typer.echo(
        f"images        {_shape(manifest)} {manifest['dtype']}, values in [0, {manifest['value_range'][1]:g}]"
        + ("" if not manifest.get("binarization") else f", test binarised (seed {manifest['binarization']['seed']})")
    )
    typer.echo(f"content hash  {ref.content_hash}")
    typer.echo(f"source        {redact_url(manifest['source_uri'])}")
    typer.echo(f"path          {ref.path}")


@app.command(rich_help_panel="Data")
def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as one JSON list.")] = False,
) -> None:
    """List ingested datasets: name, version, rows per split, shape, hash, source."""
    from vae.data.datasets import list_datasets

    found = list_datasets()
    if as_json:
        typer.echo(json.dumps(found))
        return
    if not found:
        from vae.paths import datasets_dir

        typer.echo(f"no datasets under {datasets_dir()} (add one with `vae ingest SOURCE --name NAME`)")
        return
    typer.echo(
        f"{'NAME':20} {'VERSION':12} {'TRAIN':>8} {'VAL':>7} {'TEST':>7}  {'SHAPE':9} {'DTYPE':7} {'HASH':12}  SOURCE"
    )
    for m in found:
        if "error" in m:
            typer.echo(f"{m['name']:20} {m['version']:12} ({m['error']}: {Path(m['path']) / 'manifest.json'})")
            continue
        if "damaged" in m:
            typer.echo(
                f"{m['name']:20} {m['version']:12} (damaged: {m['damaged']}: {m['path']}; `vae ingest` writes it again)"
            )
            continue
        rows = m.get("rows", {})
        typer.echo(
            f"{m['name']:20} {m['version']:12} {rows.get('train', 0):>8} {rows.get('validation', 0):>7} "
            f"{rows.get('test', 0):>7}  {_shape(m):9} {m.get('dtype', '?'):7} {m.get('content_hash', '')[:12]:12}  "
            f"{m.get('source_uri', '')}"
        )
