"""The drift check: a model's log p̂(x) on a reference split and on new data, one protocol for both, and
a verdict on whether the new data is still what the model was trained for.

Both sides are scored by `vae.jobs.scoring.score_dataset` (Ray Data actors; row n of either side draws the
noise of example n for the same k and seed, so the two sides share one estimator and one noise
stream). The statistics are vae.jobs.drift_statistics: the typicality test of Nalisnick et al. (2019b)
and a two-sample Kolmogorov–Smirnov test on log p̂(x) decide the verdict, each at half the configured
false-alarm rate (Bonferroni), and every row gets an OOD score, raw and typicality.

Everything that can be wrong (an output that exists, a dataset that is missing, empty, of another
shape than the model, stored binarised on one side only, or the very rows of the reference) is one
line before the model is scored and Ray starts. The output is one Parquet file written atomically,
each row with its lineage and the whole summary in the file's metadata (key `vae.drift`).

What a check shows people (the verdict rows, the histograms, its MLflow run) is vae.jobs.drift_report.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vae.jobs import drift_statistics as stats
from vae.jobs.batch import ResolvedModel, check_output, job_output, load_model, write_parquet
from vae.config import DriftConfig, ScoreConfig
from vae.data.datasets import SPLITS, read_manifest
from vae.errors import DataError
from vae.data.inputs import check_model_inputs

METADATA_KEY = b"vae.drift"
OOD_METHOD = "typicality"  # the per-row score whose flag is `ood` (vae.jobs.drift_statistics.ood_scores)
DRIFT_EXIT_CODE = 3  # `vae drift` when drift is detected (1: an error, 2: a usage error)

SCHEMA = pa.schema(
    [
        ("set", pa.string()),  # reference | new
        ("dataset_name", pa.string()),
        ("dataset_version", pa.string()),
        ("dataset_hash", pa.string()),
        ("split", pa.string()),
        ("row", pa.int64()),  # index within the split
        ("label", pa.int64()),
        ("log_px", pa.float64()),  # log p̂(x), nats
        ("bits_per_dim", pa.float64()),  # -log p̂(x) / (D ln 2)
        ("elbo", pa.float64()),
        ("ess", pa.float64()),
        ("ood_score_raw", pa.float64()),  # -log p̂(x)
        ("ood_score_typicality", pa.float64()),  # |-log p̂(x) - Ĥ_ref|
        ("ood_method", pa.string()),  # the score `ood` thresholds
        ("ood", pa.bool_()),
        ("model_uri", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("reference_hash", pa.string()),
        ("new_hash", pa.string()),
        ("k", pa.int64()),
        ("seed", pa.int64()),
    ]
)


@dataclass(frozen=True)
class DataSide:
    """One side of the comparison: a stored dataset version and the splits of it that are read."""

    role: str  # reference | new
    name: str
    version: str
    path: str
    content_hash: str
    splits: tuple[str, ...]
    rows: int
    binarized: bool  # every split read is stored binarised once (binarize_test_seed), or none is

    def describe(self) -> str:
        return f"{self.name}@{self.version}:{'+'.join(self.splits)}"


def parse_spec(spec: str, what: str) -> tuple[str, tuple[str, ...] | None]:
    """'NAME', 'NAME:SPLIT', a directory or 'DIRECTORY:SPLIT' → (name or directory, splits or None)."""
    base, colon, split = spec.rpartition(":")
    if not colon or Path(spec).exists():
        return spec, None
    if split not in SPLITS:
        raise DataError(
            f"{what} {spec!r}: split {split!r}: expected NAME[:SPLIT] with SPLIT one of {', '.join(SPLITS)}"
        )
    if not base:
        raise DataError(f"{what} {spec!r}: expected NAME[:SPLIT], a dataset name or directory before the ':'")
    return base, (split,)


def resolve_side(spec: str, role: str, what: str, default_splits: tuple[str, ...] | None) -> DataSide:
    """A dataset spec resolved to its version (a name: the newest), with the splits to read, all checked
    to hold rows; `default_splits` None: every split that has rows."""
    from vae.evaluate.evaluation import resolve_dataset

    name, splits = parse_spec(spec, what)
    path = resolve_dataset(name)
    manifest = read_manifest(path)
    rows = {split: int(manifest["rows"].get(split, 0)) for split in SPLITS}
    if splits is None:
        splits = default_splits or tuple(split for split in SPLITS if rows[split] > 0)
        if not splits:
            raise DataError(f"{path}: every split is empty (expected at least one image)")
    for split in splits:
        if rows[split] == 0:
            raise DataError(f"{path}: split '{split}' is empty (expected at least one image)")
    binarized = manifest.get("binarization") or {}
    flags = {split: split == binarized.get("split") for split in splits}
    if len(set(flags.values())) > 1:
        raise DataError(
            f"{what} {spec!r}: split '{binarized['split']}' is stored binarised (seed {binarized.get('seed')}) and "
            f"{', '.join(s for s, f in flags.items() if not f)} not: pick one kind (NAME:SPLIT)"
        )
    return DataSide(
        role=role,
        name=str(manifest.get("name", Path(path).parent.name)),
        version=str(manifest.get("version", Path(path).name)),
        path=path,
        content_hash=str(manifest["content_hash"]),
        splits=tuple(splits),
        rows=sum(rows[split] for split in splits),
        binarized=any(flags.values()),
    )


def check_sides(reference: DataSide, new: DataSide) -> None:
    """Refuse comparisons that mean nothing: the reference's own rows, or binarised against grey pixels."""
    shared = sorted(set(reference.splits) & set(new.splits))
    if Path(reference.path).resolve() == Path(new.path).resolve() and shared:
        raise DataError(
            f"new data {new.describe()}: the same rows as the reference (split {shared[0]} of {reference.path}); "
            "expected other data, e.g. NAME:validation against NAME:test"
        )
    if reference.binarized != new.binarized:
        stored, other = (reference, new) if reference.binarized else (new, reference)
        raise DataError(
            f"{stored.describe()} is stored binarised once (binarize_test_seed) and {other.describe()} is not: "
            "their pixels differ in kind, so log p(x) would differ without drift (compare splits of one kind)"
        )


def check_model_fits(model: ResolvedModel, *sides: DataSide) -> None:
    """Both datasets are what the model's density reads, checked as `vae score` checks its input
    (vae.data.inputs.check_model_inputs: pixels per image, image shape, 8-bit pixels for an 8-bit
    likelihood, binary pixels for a Bernoulli one): one line naming the dataset otherwise."""
    for side in sides:
        check_model_inputs(side.path, read_manifest(side.path), model.state, model.binarize, "score", density=True)


@dataclass(frozen=True)
class DriftResult:
    """What a drift check wrote and decided; `statistics` is vae.jobs.drift_statistics' view of it."""

    path: str
    drift: bool
    verdict: str  # 'drift' | 'no drift'
    reasons: list[str]
    model_uri: str
    model_name: str | None
    model_version: str | None
    k: int
    seed: int
    bits_per_dim_kind: str
    reference: dict[str, Any]
    new: dict[str, Any]
    statistics: dict[str, Any]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_side(model: ResolvedModel, model_uri: str, side: DataSide, settings: DriftConfig, folder: Path, plain: bool):
    """Per-example log p̂(x) of one side by vae.jobs.scoring (Ray Data actors), read back as a table."""
    from vae.jobs import scoring

    options = ScoreConfig(
        splits=side.splits,
        k=settings.k,
        seed=settings.seed,
        workers=settings.workers,
        batch_size=settings.batch_size,
        max_memory_mb=settings.max_memory_mb,
        use_gpu=settings.use_gpu,
    )
    out = folder / f"{side.role}.parquet"
    scoring.score_dataset(
        model.state,
        side.path,
        out,
        options,
        model_uri=model_uri,
        model_name=model.name,
        model_version=model.version,
        binarize=model.binarize,
        overwrite=True,
        plain=plain,
    )
    return pq.read_table(out)


def decide(nll_ref: np.ndarray, nll_new: np.ndarray, settings: DriftConfig) -> dict[str, Any]:
    """The batch tests, the per-row thresholds and the verdict, from the two sides' -log p̂(x)."""
    entropy = stats.entropy_estimate(nll_ref)
    alpha = settings.false_alarm_rate / 2.0  # Bonferroni over the two batch tests
    null = stats.bootstrap_typicality(nll_ref, nll_new.shape[0], draws=settings.bootstrap, seed=settings.seed)
    typicality = stats.typicality_statistic(nll_new, entropy)
    threshold = stats.typicality_threshold(null, alpha)
    ks, ks_p, ks_method = stats.ks_two_sample(nll_ref, nll_new)
    quantile = 1.0 - settings.row_false_alarm_rate
    row_threshold = float(np.quantile(stats.ood_scores(nll_ref, entropy, OOD_METHOD), quantile))
    raw_threshold = float(np.quantile(nll_ref, quantile))  # what a likelihood threshold would use
    mean_new = float(np.mean(nll_new))
    reasons = []
    if typicality > threshold:
        side = "MORE likely (simpler?)" if mean_new < entropy else "less likely"
        reasons.append(
            f"typicality: mean -log p̂(x) {mean_new:.3f} nats is {typicality:.3f} from Ĥ_ref {entropy:.3f} "
            f"(threshold {threshold:.3f} at α = {alpha:g}); the new data is {side} than the reference"
        )
    if ks_p < alpha:
        reasons.append(f"KS: D = {ks:.3f}, p = {ks_p:.3g} < α = {alpha:g}")
    return {
        "entropy": entropy,
        "reference_mean_nll": float(np.mean(nll_ref)),
        "new_mean_nll": mean_new,
        "new_more_likely": mean_new < entropy,
        "typicality_statistic": typicality,
        "typicality_threshold": threshold,
        "typicality_p_value": stats.bootstrap_p_value(null, typicality),
        "typicality_alpha": alpha,
        "bootstrap": settings.bootstrap,
        "ks_statistic": ks,
        "ks_p_value": ks_p,
        "ks_method": ks_method,
        "ks_alpha": alpha,
        "ood_method": OOD_METHOD,
        "ood_threshold": row_threshold,
        "row_false_alarm_rate": settings.row_false_alarm_rate,
        "new_ood_fraction": float(np.mean(stats.ood_scores(nll_new, entropy, OOD_METHOD) > row_threshold)),
        "reference_ood_fraction": float(np.mean(stats.ood_scores(nll_ref, entropy, OOD_METHOD) > row_threshold)),
        "raw_threshold": raw_threshold,
        "new_raw_flagged_fraction": float(np.mean(nll_new > raw_threshold)),
        "drift": bool(reasons),
        "reasons": reasons,
    }


def rows_table(
    scored: pa.Table, side: DataSide, entropy: float, row_threshold: float, data_dim: int, lineage: dict[str, Any]
) -> pa.Table:
    """One side's scored rows with bits/dim, both OOD scores, the flag and the lineage, as SCHEMA."""
    log_px = scored.column("log_px").to_numpy()  # (N,)
    nll = -log_px
    typicality = stats.ood_scores(nll, entropy, OOD_METHOD)
    n = scored.num_rows
    columns = {
        "set": pa.array([side.role] * n, pa.string()),
        "dataset_name": pa.array([side.name] * n, pa.string()),
        "dataset_version": pa.array([side.version] * n, pa.string()),
        "dataset_hash": pa.array([side.content_hash] * n, pa.string()),
        "split": scored.column("split"),
        "row": scored.column("row"),
        "label": scored.column("label"),
        "log_px": scored.column("log_px"),
        "bits_per_dim": pa.array(stats.bits_per_dim(nll, data_dim)),
        "elbo": scored.column("elbo"),
        "ess": scored.column("ess"),
        "ood_score_raw": pa.array(stats.ood_scores(nll, entropy, "raw")),
        "ood_score_typicality": pa.array(typicality),
        "ood_method": pa.array([OOD_METHOD] * n, pa.string()),
        "ood": pa.array(typicality > row_threshold),
        **{name: pa.array([value] * n, SCHEMA.field(name).type) for name, value in lineage.items()},
    }
    return pa.table(columns, schema=SCHEMA)


def side_summary(side: DataSide, log_px: np.ndarray, data_dim: int) -> dict[str, Any]:
    return {
        "dataset": side.name,
        "version": side.version,
        "path": side.path,
        "content_hash": side.content_hash,
        "splits": list(side.splits),
        "n": int(log_px.shape[0]),
        "mean_log_px": float(np.mean(log_px)),
        "bits_per_dim": float(-np.mean(log_px) / (data_dim * math.log(2.0))),
    }


def prepare(
    model_uri: str, reference: str, new: str, settings: DriftConfig, out, binarize: str, overwrite: bool
) -> tuple[ResolvedModel, DataSide, DataSide, Path]:
    """Everything that can be wrong, checked before any scoring: the output, both datasets and their splits,
    the pair, the model (downloaded; an alias resolved once, so both sides meet the same version), its shape."""
    if out is not None:
        check_output(out, overwrite)
    reference_side = resolve_side(reference, "reference", "--reference", ("test",))
    new_side = resolve_side(new, "new", "--dataset", None)
    check_sides(reference_side, new_side)
    model = load_model(model_uri, binarize)
    check_model_fits(model, reference_side, new_side)
    if out is None:
        out = default_output(model.name, model.version, reference_side, new_side, settings)
        check_output(out, overwrite)
    return model, reference_side, new_side, Path(out)


def check_drift(
    model_uri: str,
    reference: str,
    new: str,
    settings: DriftConfig,
    out: str | Path | None = None,
    *,
    binarize: str = "threshold",
    overwrite: bool = False,
    plain: bool = False,
) -> DriftResult:
    """Score `reference` (NAME[:SPLIT], default split test) and `new` (NAME[:SPLIT], default every split)
    with `model_uri` under one protocol, decide, and write the rows and the verdict to `out` (default
    `default_output`). All checks come before the model is scored; `plain` scores in this process."""
    from vae.models.model import model_from_state

    started = time.perf_counter()
    model, reference_side, new_side, out = prepare(model_uri, reference, new, settings, out, binarize, overwrite)
    data_dim = int(model.state["data_dim"])
    with tempfile.TemporaryDirectory(prefix="vae-drift-") as folder:  # the two sides' scores, read back
        scored = {
            side.role: score_side(model, model_uri, side, settings, Path(folder), plain)
            for side in (reference_side, new_side)
        }
    nll_ref = -scored["reference"].column("log_px").to_numpy()  # (m,)
    nll_new = -scored["new"].column("log_px").to_numpy()  # (n,)
    decision = decide(nll_ref, nll_new, settings)
    result = DriftResult(
        path=str(out),
        drift=decision["drift"],
        verdict="drift" if decision["drift"] else "no drift",
        reasons=decision["reasons"],
        model_uri=model_uri,
        model_name=model.name,
        model_version=model.version,
        k=settings.k,
        seed=settings.seed,
        bits_per_dim_kind=model_from_state(model.state).bits_per_dim_kind,
        reference=side_summary(reference_side, -nll_ref, data_dim),
        new=side_summary(new_side, -nll_new, data_dim),
        statistics={k: v for k, v in decision.items() if k not in ("drift", "reasons")},
        seconds=round(time.perf_counter() - started, 3),
        settings=settings.model_dump(mode="json", include={"false_alarm_rate", "row_false_alarm_rate", "bootstrap"}),
    )
    lineage = {
        "model_uri": model_uri, "model_name": model.name, "model_version": model.version, "k": settings.k,
        "reference_hash": reference_side.content_hash, "new_hash": new_side.content_hash, "seed": settings.seed,
    }  # fmt: skip
    tables = (
        rows_table(scored[side.role], side, decision["entropy"], decision["ood_threshold"], data_dim, lineage)
        for side in (reference_side, new_side)
    )
    write_parquet(out, SCHEMA.with_metadata({METADATA_KEY: json.dumps(result.to_dict()).encode()}), tables)
    return result


def read_result(path: str | Path) -> DriftResult:
    """The summary a drift check stored in its output's metadata."""
    metadata = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in metadata:
        raise DataError(f"{path}: not the output of a drift check (no '{METADATA_KEY.decode()}' metadata)")
    return DriftResult(**json.loads(metadata[METADATA_KEY]))


def default_output(
    model_name: str | None, model_version: str | None, reference: DataSide, new: DataSide, settings: DriftConfig
) -> Path:
    """VAE_HOME/drift/NEW/MODEL-vVERSION-REFVERSION-SPLITS-NEWVERSION-SPLITS-kK-seedS.parquet: one file per
    (model version, reference, new data, protocol), so a scheduled rerun on unchanged inputs can skip."""
    from vae.paths import vae_home

    name = (
        f"{model_name or 'model'}-v{model_version or 'x'}-{reference.version}-{'+'.join(reference.splits)}"
        f"-{new.version}-{'+'.join(new.splits)}-k{settings.k}-seed{settings.seed}.parquet"
    )
    return job_output(vae_home() / "drift", new.name, name)
