"""`vae --help`'s "Batch jobs" group: a registered model (or a checkpoint) over a dataset, each job
calling the library directly (Ray Data; no Prefect server to start) and each also a Prefect deployment
on a schedule when pipelines.yaml has its section:

- `vae embed`  q(z|x) of every row → Parquet ('embed/NAME');
- `vae score`  per-example log p̂(x) and ELBO → Parquet ('score/NAME');
- `vae sample` seeded samples from the prior → PNG grid or .npz ('sample/NAME');
- `vae drift`  reference and new data scored alike, typicality and KS tests; exit 3 on drift ('drift/NAME').
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
    build_config,
    check_binarize,
    fail,
    json_stdout,
    quiet_logs,
)
from vae.config import DEFAULT_PIPELINES_FILE
from vae.errors import VAEError

PANEL = "Batch jobs"


@app.command(rich_help_panel=PANEL)
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


@app.command(rich_help_panel=PANEL)
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


@app.command(rich_help_panel=PANEL)
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


def drift_options(pipeline: str | None, file: Path, reference: str | None, dataset: str | None, given: dict):
    """(reference, new data, DriftConfig): the pipeline's dataset and drift section (with --pipeline),
    overridden by the options given; a value the schema refuses is one line naming its option."""
    from vae.config import DriftConfig, load_pipeline

    base: dict = {}
    if pipeline is not None:
        settings = load_pipeline(pipeline, file)
        if settings.drift is None:
            fail(f"{file}: pipeline '{pipeline}' has no drift: section (expected one to take the settings from)")
        base = settings.drift.model_dump(exclude={"dataset", "ingest"})
        reference = reference or f"{settings.dataset.name}:{settings.drift.reference_split}"
        dataset = dataset or settings.drift.dataset or settings.drift.ingest.name
    if reference is None:
        fail("--reference: missing (expected NAME[:SPLIT], or --pipeline NAME with a drift: section)")
    if dataset is None:
        fail("--dataset: missing (expected NAME[:SPLIT], or --pipeline NAME with a drift: section)")
    options = {f"drift.{name}": (name, value) for name, value in base.items() if given.get(name, (0, None))[1] is None}
    options.update({flag: (name, value) for name, (flag, value) in given.items() if value is not None})
    options["--dataset"] = ("dataset", dataset)
    return reference, dataset, build_config(DriftConfig, options)


@app.command(rich_help_panel=PANEL)
def drift(
    model: ModelArgument,
    reference: Annotated[
        Optional[str],
        typer.Option(
            "--reference",
            "-r",
            help="Data the model should find typical: NAME[:SPLIT] or a directory "
            "(default split: test; with --pipeline: its dataset and drift.reference_split).",
        ),
    ] = None,
    dataset: Annotated[
        Optional[str],
        typer.Option(
            "--dataset",
            "-d",
            help="The new data: NAME[:SPLIT] or a directory (default: every split; with --pipeline: drift.dataset).",
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="The Parquet file to write (default: under VAE_HOME/drift).")
    ] = None,
    pipeline: Annotated[
        Optional[str], typer.Option("--pipeline", "-p", help="Take the settings from this pipeline's drift: section.")
    ] = None,
    file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE),
    k: Annotated[Optional[int], typer.Option("--k", help="Importance samples per image (default 1000).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Noise seed, both sides alike (default 0).")] = None,
    false_alarm_rate: Annotated[
        Optional[float], typer.Option(help="P(drift | data like the reference), split over the two tests (0.01).")
    ] = None,
    row_false_alarm_rate: Annotated[
        Optional[float], typer.Option(help="Share of reference rows a per-row OOD flag may flag (0.01).")
    ] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="Null draws of the typicality statistic (2000).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray Data scoring actors (1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per actor call (256).")] = None,
    gpu: GpuOption = None,
    binarize: BinarizeOption = "threshold",
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Record the check as an MLflow run.")] = True,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Drift check: reference and new data scored alike, typicality and KS tests on log p̂(x); exit 3 on drift."""
    quiet_logs(verbose)
    check_binarize(binarize)
    given = {
        "k": ("--k", k), "seed": ("--seed", seed), "false_alarm_rate": ("--false-alarm-rate", false_alarm_rate),
        "row_false_alarm_rate": ("--row-false-alarm-rate", row_false_alarm_rate),
        "bootstrap": ("--bootstrap", bootstrap), "workers": ("--workers", workers),
        "batch_size": ("--batch-size", batch_size), "use_gpu": ("--gpu", gpu),
    }  # fmt: skip
    try:
        from vae.jobs import drift as stage
        from vae.jobs import drift_report

        reference, dataset, config = drift_options(pipeline, file, reference, dataset, given)
        with json_stdout(as_json):
            result = stage.check_drift(model, reference, dataset, config, out, binarize=binarize, overwrite=overwrite)
            run_id = drift_report.log_check(result, config.experiment) if mlflow else None
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "mlflow_run_id": run_id}))
    else:
        print_drift_result(result, run_id)
    if result.drift:
        raise typer.Exit(stage.DRIFT_EXIT_CODE)


def print_drift_result(result, run_id: str | None) -> None:
    s, unit = result.statistics, "nats"
    for role in ("reference", "new"):
        side = getattr(result, role)
        typer.echo(
            f"{role:13} {side['dataset']}@{side['version']}:{'+'.join(side['splits'])}  {side['n']} rows  "
            f"mean log p̂(x) {side['mean_log_px']:.3f} {unit} ({side['bits_per_dim']:.4f} bits/dim)"
        )
    typer.echo(
        f"typicality    |mean -log p̂(x) - Ĥ_ref| = {s['typicality_statistic']:.3f} {unit}, threshold "
        f"{s['typicality_threshold']:.3f} (α = {s['typicality_alpha']:g}, {s['bootstrap']} bootstrap draws), "
        f"p = {s['typicality_p_value']:.3g}"
    )
    typer.echo(
        f"KS            D = {s['ks_statistic']:.3f}, p = {s['ks_p_value']:.3g} ({s['ks_method']}), α = {s['ks_alpha']:g}"
    )
    flagged = round(s["new_ood_fraction"] * result.new["n"])
    typer.echo(
        f"OOD rows      {flagged} of {result.new['n']} new rows ({s['new_ood_fraction']:.1%}) have |-log p̂(x) - Ĥ_ref| > "
        f"{s['ood_threshold']:.3f} (reference: {s['reference_ood_fraction']:.1%}); raw -log p̂(x) > "
        f"{s['raw_threshold']:.3f} would flag {s['new_raw_flagged_fraction']:.1%}"
    )
    version = f" (version {result.model_version})" if result.model_version else ""
    typer.echo(f"model         {result.model_uri}{version}, k={result.k}, seed {result.seed}")
    typer.echo(f"written       {result.path}")
    if run_id:
        typer.echo(f"MLflow run    {run_id}")
    typer.echo(f"verdict       {'DRIFT: ' + '; '.join(result.reasons) if result.drift else 'no drift'}")
