"""`vae score` and `vae sample`: batch jobs over the generative half of a registered model.

Both call the library directly (no Prefect server to start); the same jobs run on a schedule as
the Prefect deployments 'score/NAME' and 'sample/NAME' when pipelines.yaml has those sections.
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
    VerboseOption,
    app,
    build_config,
    check_binarize,
    fail,
    json_stdout,
    quiet_logs,
)
from vae.errors import VAEError


@app.command()
def score(
    model: ModelArgument,
    dataset: DatasetOption,
    out: ParquetOutOption,
    split: Annotated[Optional[list[str]], typer.Option(help="Splits to score (repeatable; default: test).")] = None,
    k: Annotated[int, typer.Option("--k", help="Importance samples per image.")] = 5000,
    seed: Annotated[
        int, typer.Option(help="Noise seed: row n of a split uses example n's noise, as `vae evaluate`.")
    ] = 0,
    workers: Annotated[int, typer.Option(help="Ray Data scoring actors.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per actor call.")] = 256,
    gpu: GpuOption = None,
    binarize: BinarizeOption = "threshold",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Per-example log p̂(x) and ELBO of a dataset by importance sampling, with lineage → Parquet."""
    quiet_logs(verbose)
    from vae.config import ScoreConfig

    check_binarize(binarize)
    settings = build_config(
        ScoreConfig,
        {
            "--split": ("splits", tuple(split or ("test",))),
            "--k": ("k", k),
            "--seed": ("seed", seed),
            "--workers": ("workers", workers),
            "--batch-size": ("batch_size", batch_size),
            "--gpu": ("use_gpu", gpu),
        },
    )
    try:
        from vae.jobs import scoring

        with json_stdout(as_json):
            result = scoring.score(model, dataset, out, settings, binarize=binarize, overwrite=overwrite)
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    per_split = ", ".join(
        f"{name} {rows} (mean log p̂(x) {result.mean_log_px[name]:.3f})" for name, rows in result.splits.items()
    )
    version = f" (version {result.model_version})" if result.model_version else ""
    typer.echo(f"scored        {result.rows} rows in {result.seconds:.1f} s: {per_split}")
    typer.echo(f"estimator     k={result.k} importance samples per image, seed {result.seed}")
    typer.echo(f"model         {result.model_uri}{version}")
    typer.echo(f"dataset       {result.dataset_hash[:12]}")
    typer.echo(f"written       {result.path}")


@app.command()
def sample(
    model: ModelArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="A .png (grid of pixel means) or .npz (arrays) path.")],
    n: Annotated[int, typer.Option("-n", help="How many samples.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of z ~ p(z) (the model's prior) and of x ~ p(x|z).")] = 0,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Seeded samples from the prior: a PNG grid of pixel means, or .npz arrays z, x_mean and x_sample."""
    quiet_logs(verbose)
    from vae.config import SampleConfig

    settings = build_config(SampleConfig, {"-n": ("n", n), "--seed": ("seed", seed)})
    try:
        from vae.jobs import sampling

        result = sampling.sample(model, out, settings.n, settings.seed, overwrite)
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    version = f" (version {result.model_version})" if result.model_version else ""
    typer.echo(f"sampled       {result.n} images of shape {tuple(result.shape)} from the prior, seed {result.seed}")
    typer.echo(f"model         {result.model_uri}{version}")
    typer.echo(f"written       {result.path}")
