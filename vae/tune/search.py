"""Hyperparameter search: Ray Tune over a pipeline's `search:` section, each trial the project's own training.

In Ray 2.60 (Train V2) a Trainer is no longer handed to a Tuner; each trial is a Tune function that
calls `vae.train.training.train` (TorchTrainer.fit inside), so checkpoints, Ray Data input and GPU workers
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
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vae import integrity
from vae.evaluate import evaluation
from vae.registry import registration
from vae.registry import store as registry
from vae.train import training
from vae.cluster import ensure_ray
from vae.config import SEARCHABLE, Distribution, NetworkSpec, PipelineConfig, SearchSpace
from vae.data.datasets import DatasetRef
from vae.errors import ConfigError, VAEError
from vae.paths import inside, tracking_uri, vae_home
from vae.user_code import add_search_paths, code_dirs

SEARCH_FILE = "search.json"
STATE_SIGNATURE = "state.sig"  # the HMAC of every file of Tune's experiment (`ray/`), written when the search stops
TRIAL_FILE = "trial.json"  # written by a trial that trained to the end: its checkpoint and history
# The per-epoch metrics a trial's MLflow run records (the rest of Tune's result is bookkeeping).
CURVE = (
    "train_elbo",
    "train_objective",
    "train_kl",
    "validation_elbo",
    "validation_iwae",
    "learning_rate",
    "samples_per_second",
)
LABELS = {"validation_elbo": "val ELBO", "validation_iwae": "val IWAE"}  # search.metric in progress lines


class SearchInterrupted(VAEError):
    """The search stopped before its trials ended (Ctrl-C, SIGTERM); `--resume` continues it."""


def _sample(distribution: Distribution):
    from ray import tune

    if distribution.loguniform is not None:
        return tune.loguniform(*distribution.loguniform)
    if distribution.uniform is not None:
        return tune.uniform(*distribution.uniform)
    if distribution.randint is not None:
        low, high = distribution.randint
        return tune.randint(low, high + 1)  # Tune's upper end is exclusive; ours is included
    return tune.choice(list(distribution.choice))


def param_space(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The search space as Tune's param_space: {section: {field: domain}}, e.g. {"training": {"learning_rate": …}}."""
    sections: dict[str, dict[str, Any]] = {}
    for name, distribution in space.given().items():
        sections.setdefault(SEARCHABLE[name], {})[name] = _sample(distribution)
    return sections


def _plain(value: Any) -> Any:
    """A drawn value as plain Python (Tune draws NumPy scalars; lists stay lists)."""
    return value.item() if hasattr(value, "item") else value


def trial_config(base: PipelineConfig, drawn: dict[str, dict[str, Any]]) -> PipelineConfig:
    """The pipeline with one trial's draw, its per-trial workers and epochs, validated like pipelines.yaml."""
    from pydantic import ValidationError

    from vae.config import describe_error

    search = base.search
    body = base.model_dump()
    for section, values in drawn.items():
        body[section].update({name: _plain(value) for name, value in values.items()})
    if search is not None:
        # A checkpoint every epoch: a trial stopped early or cut by the time budget can still be the best.
        epochs = search.epochs or base.training.epochs
        body["training"].update(workers=search.workers, epochs=epochs, checkpoint_every=1)
        if search.metric == "validation_iwae":  # every epoch reports L_k at the search's k
            body["training"]["validation_k"] = search.validation_k
    try:
        return PipelineConfig.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "search.space"
        raise ConfigError(
            f"pipeline '{base.name}': trial draw {drawn}: field '{where}': {describe_error(error)}"
        ) from None


def searches_dir(pipeline: str) -> Path:
    """VAE_HOME/tune/PIPELINE: one folder per search of the pipeline."""
    return inside(vae_home() / "tune", pipeline)


def latest_search(pipeline: str) -> Path | None:
    """The newest search folder of `pipeline` (what --resume continues), or None."""
    root = searches_dir(pipeline)
    found = sorted(path.parent for path in root.glob(f"*/{SEARCH_FILE}")) if root.is_dir() else []
    return found[-1] if found else None


def _write_json(path: Path, value: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename: never half-written."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(value, stream, indent=2, default=str)
    os.replace(temporary, path)


def _run_trial(drawn: dict, *, base: PipelineConfig, dataset: DatasetRef, folder: str, code_dirs=()) -> None:
    """One trial, in a Tune actor: this draw's training, every epoch's metrics reported to Tune."""
    from ray import tune

    add_search_paths(code_dirs)  # users' network modules (a searched choice among them too)

    config = trial_config(base, drawn)
    trial_id = tune.get_context().get_trial_id()
    storage = inside(folder, "checkpoints", trial_id)
    # A restored search restarts an unfinished trial here: it continues from its newest checkpoint.
    resume = training.latest_checkpoint(config.name, storage) is not None
    result = training.train(
        config, dataset, run_id=trial_id, resume=resume, storage_path=storage, echo=None, on_epoch=tune.report
    )
    _write_json(
        storage / TRIAL_FILE, {"checkpoint": result.checkpoint, "epochs": result.epochs, "history": result.history}
    )


@dataclass
class _Search:
    """What the driver-side callback needs; kept in this process, since Tune pickles its callbacks."""

    base: PipelineConfig
    dataset: dict[str, str]
    parent_run_id: str
    uri: str
    echo: Callable[[str], None] | None
    trials: int
    epochs: int
    runs: dict[str, str] = field(default_factory=dict)
    finished: int = 0
    said_at: dict[str, float] = field(default_factory=dict)  # trial id → when its last progress line was printed

    @property
    def metric(self) -> str:
        return self.base.search.metric


PROGRESS_SECONDS = 30.0  # a running trial prints its epoch and search metric at most this often


_SEARCHES: dict[str, _Search] = {}


def _describe_draw(drawn: dict) -> str:
    values = {name: _plain(value) for section in drawn.values() for name, value in section.items()}
    return " ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in values.items()
    )


def _trial_runs_class():
    """The Tune callback that keeps each trial's MLflow child run and prints one line per trial.

    It runs on the driver (one writer on a sqlite store). Built on first use, since Ray is imported
    lazily, and reachable as `vae.tune.search.TrialRuns` (module __getattr__), so the copy Tune pickles
    into its experiment state is found again by name when a search is restored.
    """
    from ray.tune import Callback

    class TrialRuns(Callback):
        def __init__(self, key: str):
            self.key = key  # only the search folder is pickled; the rest is this process's _SEARCHES[key]

        def on_trial_start(self, iteration, trials, trial, **info):
            search = _SEARCHES[self.key]
            config = trial_config(search.base, trial.config)
            search.runs[trial.trial_id] = registry.start_trial_run(
                config, search.dataset, search.parent_run_id, trial.trial_id, search.uri
            )
            if search.echo:
                search.echo(f"  started  {trial.trial_id}  {_describe_draw(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            search = _SEARCHES[self.key]
            curve = {name: float(result[name]) for name in CURVE if name in result}
            epoch = int(result["epoch"])
            registry.log_epoch_metrics(search.uri, search.runs[trial.trial_id], curve, step=epoch)
            now = time.monotonic()
            if search.echo and now - search.said_at.get(trial.trial_id, -math.inf) >= PROGRESS_SECONDS:
                search.said_at[trial.trial_id] = now
                value = float(result.get(search.metric, math.nan))
                search.echo(
                    f"  running  {trial.trial_id}  epoch {epoch:>3}/{search.epochs}  {LABELS[search.metric]} {value:9.3f}"
                )

        def on_trial_complete(self, iteration, trials, trial, **info):
            search = _SEARCHES[self.key]
            last = trial.last_result or {}
            epoch = int(last.get("epoch", 0))
            finished = (Path(self.key) / "checkpoints" / trial.trial_id / TRIAL_FILE).exists()
            outcome = "trained to the end" if finished else f"stopped early after epoch {epoch}"
            registry.set_tags(search.runs[trial.trial_id], {"outcome": outcome}, search.uri)
            registry.end_run(search.runs[trial.trial_id], "FINISHED", search.uri)
            value = last.get(search.metric, math.nan)
            self._say(
                search,
                trial,
                f"epoch {epoch:>3}/{search.epochs}  {LABELS[search.metric]} {value:9.3f}  "
                + ("done" if finished else "stopped"),
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            search = _SEARCHES[self.key]
            if trial.trial_id in search.runs:
                registry.end_run(search.runs[trial.trial_id], "FAILED", search.uri)
            self._say(search, trial, f"failed (see {trial.error_file or 'Ray logs'})")

        @staticmethod
        def _say(search: _Search, trial, outcome: str) -> None:
            search.finished += 1
            if search.echo:
                draw = _describe_draw(trial.config)
                search.echo(f"trial {search.finished:>2}/{search.trials}  {trial.trial_id}  {outcome}  {draw}")

    TrialRuns.__module__, TrialRuns.__qualname__ = __name__, "TrialRuns"
    return TrialRuns


BUDGET_FILE = "budget.json"  # the search's time budget and the seconds its trials have used so far


def _search_budget_class():
    """The Tune stopper that holds a search's time budget across `--resume`.

    Tune pickles its controller's stopper into the experiment state and a restored search runs on the
    restored one, so the budget counts the time of every run of the search, not of this process. The
    live stopper writes the seconds used to BUDGET_FILE (at most every 5 s, and when it runs out):
    `search` reads it to tell a search the budget ended from one Ctrl-C stopped. Built on first use
    (Ray is imported lazily) and registered as `vae.tune.search.SearchBudget` so its pickles load.
    """
    from ray.tune import Stopper

    class SearchBudget(Stopper):
        def __init__(self, folder: str, seconds: float):
            self.folder, self.seconds, self.used = folder, float(seconds), 0.0
            self._last: float | None = None  # set at the first check: start-up is not counted
            self._written = -math.inf

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            now = time.monotonic()
            if self._last is not None:
                self.used += now - self._last
            self._last = now
            out = self.used >= self.seconds
            if out or now - self._written >= 5.0:
                self._written = now
                _write_json(Path(self.folder) / BUDGET_FILE, {"seconds": self.seconds, "used": self.used})
            return out

        def __setstate__(self, state: dict) -> None:  # restored: the time away does not count
            state["_last"], state["_written"] = None, -math.inf
            self.__dict__.update(state)

    SearchBudget.__module__, SearchBudget.__qualname__ = __name__, "SearchBudget"
    return SearchBudget


def budget_used_up(folder: Path) -> bool:
    """Whether the search in `folder` has used its whole time budget (BUDGET_FILE; no file: no budget
    or not started)."""
    try:
        record = json.loads((Path(folder) / BUDGET_FILE).read_text())
    except (OSError, ValueError):
        return False
    return float(record["used"]) >= float(record["seconds"])


def __getattr__(name: str):
    # Built once, on first use (see _trial_runs_class, _search_budget_class).
    builders = {"TrialRuns": _trial_runs_class, "SearchBudget": _search_budget_class}
    if name in builders:
        globals()[name] = cls = builders[name]()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            stop=sys.modules[__name__].SearchBudget(str(folder), max_minutes * 60) if max_minutes else None,
            callbacks=[sys.modules[__name__].TrialRuns(str(folder))],
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
    trial = tune.with_parameters(
        _run_trial, base=config, dataset=dataset, folder=str(folder), code_dirs=tuple(code_dirs(specs))
    )
    # The trial function holds a token CPU (Tune refuses none): its Ray Train workers reserve their own.
    return tune.with_resources(trial, {"CPU": 0.01})


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
            checkpoint = training.latest_checkpoint(pipeline, storage)
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
            "config": {name: _plain(v) for section in result.config.values() for name, v in section.items()},
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
        if record.get("dataset", {}).get("content_hash") != dataset.content_hash:
            raise VAEError(
                f"--resume: the search at {folder} ran on dataset version {record['dataset']['version']}, "
                f"the pipeline's data is now {dataset.version}; start a new search (without --resume)"
            )
        registry.reopen_run(record["parent_run_id"], uri)
        return folder, record, True
    folder = inside(searches_dir(config.name), time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=False)
    search = config.search.model_dump(mode="json", exclude_none=True)
    parent = registry.start_search_run(config, dataset.to_dict(), search, uri)
    record = {
        "pipeline": config.name,
        "parent_run_id": parent,
        "dataset": dataset.to_dict(),
        "status": "running",
        "budget": budget,
    }
    _write_json(folder / SEARCH_FILE, record)
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
    training.check_validation_rows(dataset, "vae tune (ASHA and the best trial)")
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
    _SEARCHES[str(folder)] = state = _Search(config, dataset.to_dict(), parent, uri, echo, trials, epochs)
    if resumed:
        state.runs.update(registry.child_runs(parent, uri))
        state.finished = len(registry.ended_runs(list(state.runs.values()), uri))
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
        _SEARCHES.pop(str(folder), None)
        integrity.sign_tree(experiment, signature)  # Ctrl-C and errors too: what Tune saved is resumable
    # Trials end through the callback (trained to the end, stopped by ASHA, or failed); fewer, with
    # time left, means Ctrl-C or SIGTERM stopped the search. Trials cut by the time budget are KILLED.
    out_of_time = max_minutes is not None and budget_used_up(folder)
    if state.finished < trials and not out_of_time:
        registry.kill_if_running(parent, uri)
        raise SearchInterrupted(
            f"search of '{config.name}' interrupted after {state.finished} of {trials} trials ended; "
            f"`vae tune {config.name} --resume` continues it ({folder})"
        )
    return _finish(config, dataset, folder, record, results, state.runs, uri, echo, started)


def _finish(config, dataset, folder, record, results, runs, uri, echo, started) -> SearchResult:
    """Score the best trial at the pipeline's k, register it through the gate, close the parent run."""
    parent = record["parent_run_id"]
    for run_id in runs.values():  # trials the time budget cut off
        registry.kill_if_running(run_id, uri)
    metric = config.search.metric
    trial_id, drawn, trained = _best_trial(results, folder, config.name, metric)
    run_id = runs.get(trial_id) or registry.child_runs(parent, uri)[trial_id]
    table = _trials_table(results, runs)
    if echo:
        echo(f"best trial {trial_id}: {_describe_draw(drawn)}; evaluating log p(x) with k={config.evaluation.k}")
    checkpoint = trained["checkpoint"]
    progress = evaluation.ProgressLine() if echo else None  # 'evaluating: n/N images, …, ETA' on long runs
    scored = evaluation.score_checkpoint(
        checkpoint, dataset.path, config.evaluation, config.dataset.binarize, progress=progress
    )
    split = scored.summary["split"]
    per_example = evaluation.write_per_example(scored, Path(checkpoint) / f"evaluation-{split}.parquet")
    summary = {**scored.summary, "per_example": str(per_example)}
    registry.reopen_run(run_id, uri)  # register_run logs to the trial's run and ends it
    registered = registration.register_run(
        trial_config(config, drawn), run_id, checkpoint, summary, dataset.to_dict(), trained["history"], uri
    )
    best = {
        "trial_id": trial_id,
        "run_id": run_id,
        "checkpoint": checkpoint,
        "epochs": trained["epochs"],
        **{name: row[name] for row in table if row["trial_id"] == trial_id for name in ("validation_elbo", metric)},
        "config": {name: _plain(v) for section in drawn.values() for name, v in section.items()},
    }
    registry.log_metrics(parent, {f"best_{metric}": best[metric], f"best_{split}_nll": summary["nll"]}, uri)
    registry.set_tags(parent, {"best_trial": trial_id, "best_run_id": run_id, "model_uri": registered.model_uri}, uri)
    registry.end_run(parent, "FINISHED", uri)
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
    _write_json(folder / SEARCH_FILE, {**record, "status": "done", "result": result.to_dict()})
    return result
