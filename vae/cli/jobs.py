"""`vae embed` and `vae deploy`: production jobs, registered on the main `vae` app.

`vae embed` calls the library directly (Ray Data; no Prefect server to start); the same job runs
on a schedule as the Prefect deployment 'embed/NAME'. `vae deploy` creates or updates one
deployment per pipeline on the Prefect server of PREFECT_API_URL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from vae.cli.app import (
    BinarizeOption,
    DatasetOption,
    GpuOption,
    JsonOption,
    ModelArgument,
    OverwriteOption,
    ParquetOutOption,
    PipelinesFile,
    VerboseOption,
    app,
    check_binarize,
    fail,
    json_stdout,
    quiet_logs,
)
from vae.config import DEFAULT_PIPELINES_FILE
from vae.errors import VAEError


@app.command()
def embed(
    model: ModelArgument,
    dataset: DatasetOption,
    out: ParquetOutOption,
    split: Annotated[Optional[list[str]], typer.Option(help="Splits to embed (repeatable; default: all).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Ray Data encoder actors.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per encoder call.")] = 4096,
    gpu: GpuOption = None,
    binarize: BinarizeOption = "threshold",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Encode a dataset with a registered model: row id, label, q(z|x) mean and log-variance → Parquet."""
    quiet_logs(verbose)
    splits = tuple(split or ("train", "validation", "test"))
    unknown = [s for s in splits if s not in ("train", "validation", "test")]
    if unknown:
        fail(f"--split {unknown[0]!r}: expected train, validation or test")
    check_binarize(binarize)
    try:
        from vae.jobs import embedding

        with json_stdout(as_json):
            result = embedding.embed(
                model,
                dataset,
                out,
                splits=splits,
                workers=workers,
                batch_size=batch_size,
                use_gpu=gpu,
                overwrite=overwrite,
                binarize=binarize,
            )
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    per_split = ", ".join(f"{name} {rows}" for name, rows in result.splits.items())
    version = f" (version {result.model_version})" if result.model_version else ""
    typer.echo(f"embedded      {result.rows} rows ({per_split}) in {result.seconds:.1f} s")
    typer.echo(f"model         {result.model_uri}{version}, latent dimension {result.latent_dim}")
    typer.echo(f"dataset       {result.dataset_hash[:12]}")
    typer.echo(f"written       {result.path}")


@app.command()
def deploy(
    file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")] = False,
    pipeline: Annotated[
        Optional[list[str]], typer.Option("--pipeline", "-p", help="Only these pipelines (repeatable).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect logs.")] = False,
) -> None:
    """Create or update the Prefect deployments 'pipeline/NAME', 'embed/NAME' (and 'score/NAME', 'sample/NAME',
    'tune/NAME' for pipelines with those sections) from the pipelines file.

    The whole file is validated first: a bad entry changes nothing.
    """
    quiet_logs(verbose)
    try:
        from flows import deployments

        changes = deployments.plan(file, only=pipeline)
        for change in changes:
            typer.echo(change.describe())
        if dry_run:
            typer.echo(
                f"dry run: {sum(c.action != 'unchanged' for c in changes)} of {len(changes)} deployments would change"
            )
            return
        deployments.apply(changes)
    except VAEError as exc:
        fail(str(exc))
    typer.echo(
        f"applied: {sum(c.action != 'unchanged' for c in changes)} created or updated, "
        f"{sum(c.action == 'unchanged' for c in changes)} unchanged"
    )
