"""`vae evaluate` (held-out log p(x) of a registered model or a checkpoint, with a standard error) and
`vae card` (a registered version's model card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from vae.cli.app import (
    BinarizeOption,
    DatasetOption,
    ModelArgument,
    app,
    build_config,
    check_binarize,
    check_output_file,
    fail,
    json_stdout,
    quiet_logs,
)
from vae.errors import VAEError


@app.command(rich_help_panel="Models")
def evaluate(
    model: ModelArgument,
    dataset: DatasetOption,
    k: Annotated[int, typer.Option("--k", help="Importance samples per image.")] = 5000,
    split: Annotated[str, typer.Option(help="Which split: test or validation.")] = "test",
    max_memory: Annotated[int, typer.Option("--max-memory", help="Memory budget for samples, MiB.")] = 256,
    workers: Annotated[int, typer.Option(help="Ray tasks to split the images across.")] = 1,
    seed: Annotated[int, typer.Option(help="Noise seed (per-example streams).")] = 0,
    gpu: Annotated[
        bool, typer.Option("--gpu/--cpu", help="Estimate on the GPU when there is one (noise drawn on the device).")
    ] = False,
    tf32: Annotated[
        bool, typer.Option("--tf32", help="Let float32 matmuls use TF32 on the GPU (faster; changes the numbers).")
    ] = False,
    binarize: BinarizeOption = "threshold",
    output: Annotated[
        Optional[Path], typer.Option(help="Per-example Parquet (default: under VAE_HOME/evaluations).")
    ] = None,
    ais: Annotated[int, typer.Option(help="Cross-check IS with annealed importance sampling on this many images.")] = 0,
    ais_steps: Annotated[int, typer.Option(help="AIS annealing steps (HMC transitions).")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray and MLflow logs.")] = False,
) -> None:
    """Estimate held-out log p(x) of a model by importance sampling, with a standard error."""
    quiet_logs(verbose)
    from vae.config import EvaluationConfig

    check_binarize(binarize)
    config = build_config(
        EvaluationConfig,
        {
            "--k": ("k", k),
            "--split": ("split", split),
            "--max-memory": ("max_memory_mb", max_memory),
            "--workers": ("workers", workers),
            "--seed": ("seed", seed),
            "--gpu": ("use_gpu", gpu),
            "--tf32": ("tf32", tf32),
        },
    )
    if output is not None:
        check_output_file(output, "--output")
    try:
        with json_stdout(as_json):
            summary = _evaluate(model, dataset, config, binarize, output, ais, ais_steps)
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary)


def _checkpoint_of(model: str, binarize: str) -> tuple[Path, str]:
    """A checkpoint directory as given, or a registered model downloaded; with its binarisation."""
    if (Path(model) / "checkpoint.pt").exists():
        return Path(model), binarize
    from vae.registry import versions

    checkpoint, metadata = versions.download_model(model)
    return checkpoint, metadata["binarize"]


def _evaluate(model: str, dataset: str, config, binarize: str, output: Path | None, ais: int, ais_steps: int) -> dict:
    from vae.evaluate import evaluation
    from vae.paths import vae_home

    dataset_path = evaluation.resolve_dataset(dataset)
    checkpoint, mode = _checkpoint_of(model, binarize)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.split("://")[-1].strip("/"))
    target = (
        output
        or vae_home() / "evaluations" / f"{slug}-{Path(dataset_path).parent.name}-{config.split}-k{config.k}.parquet"
    )
    if output is None:
        check_output_file(target, "per-example output")
    scored = evaluation.score_checkpoint(checkpoint, dataset_path, config, mode, progress=evaluation.ProgressLine())
    per_example = evaluation.write_per_example(scored, target)
    summary = {
        **scored.summary,
        "iwae_bound": -scored.summary["nll"],
        "model": model,
        "dataset": dataset_path,
        "per_example": str(per_example),
    }
    if ais:
        summary["ais"] = evaluation.ais_cross_check(checkpoint, dataset_path, config, mode, scored, ais, ais_steps)
    return summary


def _print_summary(summary: dict) -> None:
    k, cross_check = summary["k"], summary.get("ais")
    typer.echo(
        f"NLL           {summary['nll']:.3f} ± {summary['nll_stderr']:.3f} nats "
        f"({summary['bits_per_dim']:.4f} bits/dim; {summary['n']} {summary['split']} images)"
    )
    typer.echo(f"IWAE-{k} bound {summary['iwae_bound']:.3f} nats  (= mean log p̂(x))")
    typer.echo(f"ELBO          {summary['elbo']:.3f} nats")
    typer.echo(f"ELBO gap      {summary['elbo_gap']:.3f} nats  (log p̂(x) − ELBO ≈ KL(q(z|x) ‖ p(z|x)))")
    typer.echo(f"ESS           {summary['ess']:.1f} of {k} samples (mean over images)")
    if cross_check:
        typer.echo(
            f"AIS check     log p̂(x) on {cross_check['n']} images: AIS {cross_check['ais_log_px']:.3f}, "
            f"IS {cross_check['is_log_px']:.3f}, difference {cross_check['difference']:.3f} ± "
            f"{cross_check['difference_stderr']:.3f} nats"
        )
    typer.echo(f"per-example   {summary['per_example']}")


@app.command(rich_help_panel="Models")
def card(
    model: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show MLflow logs.")] = False,
) -> None:
    """Print a registered version's model card (Markdown): data, model, training, evaluation, gate, use, limits."""
    quiet_logs(verbose)
    try:
        from vae.registry import versions

        name, version, text = versions.version_description(model)
    except VAEError as exc:
        fail(str(exc))
    if not text:
        fail(f"model '{model}': version {version} of '{name}' has no model card (registered before cards were written)")
    typer.echo(text, nl=not text.endswith("\n"))
