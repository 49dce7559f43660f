"""Hyperparameter search: Ray Tune over a pipeline's `search:` section, each trial the project's own training.

In Ray 2.60 (Train V2) a Trainer is no longer handed to a Tuner; each trial is a Tune function that
calls `vae.train.driver.train` (TorchTrainer.fit inside), so checkpoints, Ray Data input and GPU workers
hold inside a trial. Training's `on_epoch` callback reports every epoch's metrics to Tune, and ASHA
stops weak trials on `search.metric`: the validation ELBO, or the validation IWAE bound L_k, which
ranks trials trained by different objectives alike (Burda et al. 2016). A Tune callback on the
driver keeps the MLflow record (one writer on a sqlite store): a parent run per search, a child run
per trial with its params and curve.
The best trial is scored at the pipeline's k and registered through the champion gate like any run.

Each search lives in VAE_HOME/tune/NAME/STAMP: `ray/` (Tune's experiment), `checkpoints/TRIAL/`
(each trial's training) and `search.json` (the parent run; the result once done). An interrupted
search continues with `Tuner.restore`: finished trials are not rerun, an unfinished one resumes
from its newest checkpoint. Tune keeps its state as pickles, so `ray/` is signed with this user's key
when the search stops (`state.sig`, vae.integrity) and checked before `Tuner.restore` opens it: a
planted or changed file is refused in one line, and nothing is loaded.

This module is the driver (start or resume a search, run Tune, finish it); the space and a trial's
settings are vae.tune.space's, the trial function, the MLflow callback and the time budget vae.tune.trials'.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vae import integrity
from vae.evaluate import evaluation
from vae.registry import registration
from vae.registry import runs as mlflow_runs
from vae.train import checkpoints, checks
from vae.train.plan import runs_in_process
from vae.tune import trials as tune_trials
from vae.tune.space import describe_draw, param_space, plain, trial_config
from vae.tune.trials import SEARCHES, TRIAL_FILE, SearchState, budget_used_up, run_trial, write_json
from vae.cluster import ensure_ray, has_gpu
from vae.config import NetworkSpec, PipelineConfig
from vae.data.datasets import DatasetRef, read_manifest
from vae.errors import ConfigError, VAEError
from vae.paths import inside, tracking_uri, vae_home
from vae.user_code import code_dirs

SEARCH_FILE = "search.json"
STATE_SIGNATURE = "state.sig"  # the HMAC of every file of Tune's experiment (`ray/`), written when the search stops
# Tune pickles the trial function and callbacks by module path: a search whose record names another state
# format (one saved by vae before its stage packages, with vae.tuning's classes) cannot be restored.
STATE_FORMAT = 2


class SearchInterrupted(VAEError):
    """The search stopped before its trials ended (Ctrl-C, SIGTERM); `--resume` continues it."""


def searches_dir(pipeline: str) -> Path:
    """VAE_HOME/tune/PIPELINE: one folder per search of the pipeline."""
    return inside(vae_home() / "tune", pipeline)


def latest_search(pipeline: str) -> Path | None:
    """The newest search folder of `pipeline` (what --resume continues), or None."""
    root = searches_dir(pipeline)
    found = sorted(path.parent for path in root.glob(f"*/{SEARCH_FILE}")) if root.is_dir() else []
    return found[-1] if found else None


@dataclass(frozen=True)
class SearchResult:
    """A finished search: its trials, the best one, its evaluation at the pipeline's k and its registration."""

    pipeline: str
    folder: str
    parent_run_id: str
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    evaluation: dict[str, Any]
    registration: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tuner(config: PipelineConfig, dataset: DatasetRef, folder: Path, trials: int, max_minutes: float | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    search = config.search
    epochs = search.epochs or config.training.epochs
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",  # Tune's own iteration count restarts when a trial resumes; the epoch does not
            max_t=epochs + 1,  # past the last epoch: a trial that reaches it ends itself, record written
            grace_period=min(search.scheduler.grace_period, epochs),
            reduction_factor=search.scheduler.reduction_factor,
        )
        if search.scheduler.kind == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        _trainable(config, dataset, folder),
        param_space=param_space(search.space),
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            num_samples=trials,
            scheduler=scheduler,
            # The limit goes to the generator itself: Tune ignores max_concurrent_trials beside one.
            search_alg=BasicVariantGenerator(random_state=search.seed, max_concurrent=search.concurrent),
        ),
        run_config=tune.RunConfig(
            name="ray",
            storage_path=str(folder),
            # The time budget (not TuneConfig.time_budget_s): one that says afterwards whether it ran out.
            stop=tune_trials.SearchBudget(str(folder), max_minutes * 60) if max_minutes else None,
            callbacks=[tune_trials.TrialRuns(str(folder))],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )


def _trainable(config: PipelineConfig, dataset: DatasetRef, folder: Path):
    from ray import tune

    # Users' networks: the pipeline's own and every searched choice, imported from their folders.
    space = config.search.space if config.search is not None else None
    choices = [getattr(space, side, None) for side in ("encoder", "decoder")]
    specs = [*config.model.network_specs]
    specs += [NetworkSpec.model_validate(value) for drawn in choices if drawn is not None for value in drawn.candidates]
    # A one-worker trial whose data fits the device trains in the trial's own process (no Ray Train
    # controller and worker group per trial) and holds the worker's resources itself; otherwise the
    # trial function holds a token CPU (Tune refuses none) and its Ray Train workers reserve their own.
    training = config.training
    in_process = runs_in_process(training, read_manifest(dataset.path), config.search.workers)
    gpu = training.use_gpu and has_gpu()
    resources = {"CPU": training.cpus_per_worker, **({"GPU": 1} if gpu else {})} if in_process else {"CPU": 0.01}
    trial = tune.with_parameters(
        run_trial,
        base=config,
        dataset=dataset,
        folder=str(folder),
        code_dirs=tuple(code_dirs(specs)),
        in_process=in_process,
    )
    return tune.with_resources(trial, resources)


def _best_trial(results, folder: Path, pipeline: str, metric: str) -> tuple[str, dict, dict]:
    """The trial to score: among trials with a checkpoint, those trained to the end first, then the
    best last `metric` (search.metric; README "The best trial"); its id, config and training record.

    A trial stopped by ASHA or cut by the time budget counts only when none trained to the end: its
    last value is of fewer epochs, and its record is its newest checkpoint, not a chosen one."""
    usable = []
    for result in results:
        metrics = result.metrics or {}
        value = metrics.get(metric)
        if result.error is not None or value is None or not math.isfinite(value):
            continue
        storage = folder / "checkpoints" / metrics["trial_id"]
        record_file = storage / TRIAL_FILE
        if record_file.exists():
            record = json.loads(record_file.read_text())
        else:  # stopped early: its newest checkpoint, if it wrote one
            checkpoint = checkpoints.latest_checkpoint(pipeline, storage)
            if checkpoint is None:
                continue
            record = {"checkpoint": checkpoint, "epochs": metrics.get("epoch"), "history": []}
        usable.append((record_file.exists(), value, metrics["trial_id"], result.config, record))
    if not usable:
        raise VAEError(
            f"search {folder}: no trial reached a checkpoint with a finite {metric} (with a time budget: "
            "too short for one epoch of any trial; raise search.max_minutes or pass --max-minutes)"
        )
    _, _, trial_id, drawn, record = max(usable, key=lambda item: (item[0], item[1]))
    return trial_id, drawn, record


def _trials_table(results, runs: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        rows.append({
            "trial_id": trial_id,
            "run_id": runs.get(trial_id),
            "epochs": metrics.get("epoch"),
            "validation_elbo": metrics.get("validation_elbo"),
            **({"validation_iwae": metrics["validation_iwae"]} if "validation_iwae" in metrics else {}),
            "config": {name: plain(v) for section in result.config.values() for name, v in section.items()},
            "error": None if result.error is None else str(result.error).splitlines()[0],
        })  # fmt: skip
    return rows


def _start_or_resume(
    config: PipelineConfig, dataset: DatasetRef, resume: bool, uri: str, budget: dict[str, Any]
) -> tuple[Path, dict, bool]:
    """The search folder and its record: the newest one to resume, or a new one with its parent run.
    `budget` ({trials, max_minutes}) is recorded with a new search: a resumed one keeps its own."""
    if resume:
        folder = latest_search(config.name)
        if folder is None:
            raise VAEError(f"--resume: no search of pipeline '{config.name}' under {searches_dir(config.name)}")
        record = json.loads((folder / SEARCH_FILE).read_text())
        if record.get("status") != "done":  # Tune's pickles are opened only when this user signed them
            integrity.verify_tree(folder / "ray", folder / STATE_SIGNATURE)
            if record.get("state_format") != STATE_FORMAT:
                raise VAEError(
                    f"--resume: the search at {folder} was saved by an earlier version of vae, whose Tune state "
                    "this version cannot load; start a new search (without --resume)"
                )
        if record.get("dataset", {}).get("content_hash") != dataset.content_hash:
            raise VAEError(
                f"--resume: the search at {folder} ran on dataset version {record['dataset']['version']}, "
                f"the pipeline's data is now {dataset.version}; start a new search (without --resume)"
            )
        mlflow_runs.reopen_run(record["parent_run_id"], uri)
        return folder, record, True
    folder = inside(searches_dir(config.name), time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=False)
    search = config.search.model_dump(mode="json", exclude_none=True)
    parent = mlflow_runs.start_search_run(config, dataset.to_dict(), search, uri)
    record = {
        "pipeline": config.name,
        "parent_run_id": parent,
        "dataset": dataset.to_dict(),
        "status": "running",
        "budget": budget,
        "state_format": STATE_FORMAT,
    }
    write_json(folder / SEARCH_FILE, record)
    return folder, record, False


def search(
    config: PipelineConfig,
    dataset: DatasetRef,
    *,
    trials: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
    echo: Callable[[str], None] | None = print,
) -> SearchResult:
    """Run (or with `resume`, continue) the pipeline's search; register the best trial through the gate.

    `trials` and `max_minutes` override the search section for a new search; a resumed one keeps
    what it started with. Raises SearchInterrupted when stopped before its trials ended.
    """
    from ray import tune

    if config.search is None:
        raise ConfigError(f"pipeline '{config.name}' has no 'search:' section (expected one to run `vae tune`)")
    checks.check_validation_rows(dataset, "vae tune (ASHA and the best trial)")
    started = time.perf_counter()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: the lines are ours
    uri = tracking_uri()
    if not resume:
        integrity.load_key(create=True)  # a key that cannot be kept is one line now, not after the trials
    budget = {"trials": trials or config.search.trials, "max_minutes": max_minutes or config.search.max_minutes}
    folder, record, resumed = _start_or_resume(config, dataset, resume, uri, budget)
    # A resumed search counts against what it started with (--trials 20 stays 20, whatever the file says);
    # records from before the budget was kept fall back to the search section.
    kept = record.get("budget", budget)
    trials, max_minutes = kept["trials"], kept["max_minutes"]
    if record.get("status") == "done":
        if echo:
            echo(f"the search at {folder} already finished; its result stands")
        return SearchResult(**record["result"])
    parent = record["parent_run_id"]
    ensure_ray(config.search.concurrent * config.search.workers * config.training.cpus_per_worker)
    experiment = folder / "ray"
    epochs = config.search.epochs or config.training.epochs
    SEARCHES[str(folder)] = state = SearchState(config, dataset.to_dict(), parent, uri, echo, trials, epochs)
    if resumed:
        state.runs.update(mlflow_runs.child_runs(parent, uri))
        state.finished = len(mlflow_runs.ended_runs(list(state.runs.values()), uri))
    if echo:
        verb = "resuming" if resumed else "searching"
        echo(f"{verb} {trials} trials of {config.name} ({folder}); MLflow parent run {parent}")
    signature = folder / STATE_SIGNATURE
    signature.unlink(missing_ok=True)  # state that changes from here on is unsigned until the search stops
    try:
        if resumed:
            tuner = tune.Tuner.restore(
                str(experiment), _trainable(config, dataset, folder), resume_unfinished=True, restart_errored=True
            )
        else:
            tuner = _tuner(config, dataset, folder, trials, max_minutes)
        results = tuner.fit()
    finally:
        SEARCHES.pop(str(folder), None)
        integrity.sign_tree(experiment, signature)  # Ctrl-C and errors too: what Tune saved is resumable
    # Trials end through the callback (trained to the end, stopped by ASHA, or failed); fewer, with
    # time left, means Ctrl-C or SIGTERM stopped the search. Trials cut by the time budget are KILLED.
    out_of_time = max_minutes is not None and budget_used_up(folder)
    if state.finished < trials and not out_of_time:
        mlflow_runs.kill_if_running(parent, uri)
        raise SearchInterrupted(
            f"search of '{config.name}' interrupted after {state.finished} of {trials} trials ended; "
            f"`vae tune {config.name} --resume` continues it ({folder})"
        )
    return _finish(config, dataset, folder, record, results, state.runs, uri, echo, started)


def _finish(config, dataset, folder, record, results, runs, uri, echo, started) -> SearchResult:
    """Score the best trial at the pipeline's k, register it through the gate, close the parent run."""
    parent = record["parent_run_id"]
    for run_id in runs.values():  # trials the time budget cut off
        mlflow_runs.kill_if_running(run_id, uri)
    metric = config.search.metric
    trial_id, drawn, trained = _best_trial(results, folder, config.name, metric)
    run_id = runs.get(trial_id) or mlflow_runs.child_runs(parent, uri)[trial_id]
    table = _trials_table(results, runs)
    if echo:
        echo(f"best trial {trial_id}: {describe_draw(drawn)}; evaluating log p(x) with k={config.evaluation.k}")
    checkpoint = trained["checkpoint"]
    progress = evaluation.ProgressLine() if echo else None  # 'evaluating: n/N images, …, ETA' on long runs
    scored = evaluation.score_checkpoint(
        checkpoint, dataset.path, config.evaluation, config.dataset.binarize, progress=progress
    )
    split = scored.summary["split"]
    per_example = evaluation.write_per_example(scored, Path(checkpoint) / f"evaluation-{split}.parquet")
    summary = {**scored.summary, "per_example": str(per_example)}
    mlflow_runs.reopen_run(run_id, uri)  # register_run logs to the trial's run and ends it
    registered = registration.register_run(
        trial_config(config, drawn), run_id, checkpoint, summary, dataset.to_dict(), trained["history"], uri
    )
    best = {
        "trial_id": trial_id,
        "run_id": run_id,
        "checkpoint": checkpoint,
        "epochs": trained["epochs"],
        **{name: row[name] for row in table if row["trial_id"] == trial_id for name in ("validation_elbo", metric)},
        "config": {name: plain(v) for section in drawn.values() for name, v in section.items()},
    }
    mlflow_runs.log_metrics(parent, {f"best_{metric}": best[metric], f"best_{split}_nll": summary["nll"]}, uri)
    mlflow_runs.set_tags(
        parent, {"best_trial": trial_id, "best_run_id": run_id, "model_uri": registered.model_uri}, uri
    )
    mlflow_runs.end_run(parent, "FINISHED", uri)
    result = SearchResult(
        pipeline=config.name,
        folder=str(folder),
        parent_run_id=parent,
        trials=table,
        best=best,
        evaluation=summary,
        registration=registered.to_dict(),
        seconds=round(time.perf_counter() - started, 1),
    )
    write_json(folder / SEARCH_FILE, {**record, "status": "done", "result": result.to_dict()})
    return result
