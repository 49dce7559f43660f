"""A search's trials: the trial function each Tune actor runs (one training), and on the driver the
Tune callback that keeps each trial's MLflow child run and progress lines and the stopper that holds
the search's time budget across `--resume`; vae.tune.search drives them.

Tune pickles the callback and the stopper into its experiment state, so their classes are built on
first use (Ray is imported lazily) and served by this module's `__getattr__` as
`vae.tune.trials.TrialRuns` and `vae.tune.trials.SearchBudget`, where a restored search finds them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vae.config import PipelineConfig
from vae.data.datasets import DatasetRef
from vae.paths import inside
from vae.registry import runs as mlflow_runs
from vae.train import checkpoints, driver
from vae.tune.space import describe_draw, trial_config
from vae.user_code import add_search_paths

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


def write_json(path: Path, value: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename: never half-written."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(value, stream, indent=2, default=str)
    os.replace(temporary, path)


def run_trial(
    drawn: dict, *, base: PipelineConfig, dataset: DatasetRef, folder: str, code_dirs=(), in_process: bool = False
) -> None:
    """One trial, in a Tune actor: this draw's training (`in_process`: in this actor, without Ray
    Train; vae.train.sessions), every epoch's metrics reported to Tune."""
    from ray import tune

    add_search_paths(code_dirs)  # users' network modules (a searched choice among them too)

    config = trial_config(base, drawn)
    trial_id = tune.get_context().get_trial_id()
    storage = inside(folder, "checkpoints", trial_id)
    # A restored search restarts an unfinished trial here: it continues from its newest checkpoint.
    resume = checkpoints.latest_checkpoint(config.name, storage) is not None
    result = driver.train(
        config,
        dataset,
        run_id=trial_id,
        resume=resume,
        storage_path=storage,
        echo=None,
        on_epoch=tune.report,
        in_process=in_process,
    )
    write_json(
        storage / TRIAL_FILE, {"checkpoint": result.checkpoint, "epochs": result.epochs, "history": result.history}
    )


@dataclass
class SearchState:
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


SEARCHES: dict[str, SearchState] = {}  # search folder → its state, while vae.tune.search runs it


def _trial_runs_class():
    """The Tune callback that keeps each trial's MLflow child run and prints one line per trial.

    It runs on the driver (one writer on a sqlite store). Built on first use, since Ray is imported
    lazily, and reachable as `vae.tune.trials.TrialRuns` (module __getattr__), so the copy Tune pickles
    into its experiment state is found again by name when a search is restored.
    """
    from ray.tune import Callback

    class TrialRuns(Callback):
        def __init__(self, key: str):
            self.key = key  # only the search folder is pickled; the rest is this process's SEARCHES[key]

        def on_trial_start(self, iteration, trials, trial, **info):
            search = SEARCHES[self.key]
            config = trial_config(search.base, trial.config)
            search.runs[trial.trial_id] = mlflow_runs.start_trial_run(
                config, search.dataset, search.parent_run_id, trial.trial_id, search.uri
            )
            if search.echo:
                search.echo(f"  started  {trial.trial_id}  {describe_draw(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            search = SEARCHES[self.key]
            curve = {name: float(result[name]) for name in CURVE if name in result}
            epoch = int(result["epoch"])
            mlflow_runs.log_epoch_metrics(search.uri, search.runs[trial.trial_id], curve, step=epoch)
            now = time.monotonic()
            if search.echo and now - search.said_at.get(trial.trial_id, -math.inf) >= PROGRESS_SECONDS:
                search.said_at[trial.trial_id] = now
                value = float(result.get(search.metric, math.nan))
                search.echo(
                    f"  running  {trial.trial_id}  epoch {epoch:>3}/{search.epochs}  {LABELS[search.metric]} {value:9.3f}"
                )

        def on_trial_complete(self, iteration, trials, trial, **info):
            search = SEARCHES[self.key]
            last = trial.last_result or {}
            epoch = int(last.get("epoch", 0))
            finished = (Path(self.key) / "checkpoints" / trial.trial_id / TRIAL_FILE).exists()
            outcome = "trained to the end" if finished else f"stopped early after epoch {epoch}"
            mlflow_runs.set_tags(search.runs[trial.trial_id], {"outcome": outcome}, search.uri)
            mlflow_runs.end_run(search.runs[trial.trial_id], "FINISHED", search.uri)
            value = last.get(search.metric, math.nan)
            self._say(
                search,
                trial,
                f"epoch {epoch:>3}/{search.epochs}  {LABELS[search.metric]} {value:9.3f}  "
                + ("done" if finished else "stopped"),
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            search = SEARCHES[self.key]
            if trial.trial_id in search.runs:
                mlflow_runs.end_run(search.runs[trial.trial_id], "FAILED", search.uri)
            self._say(search, trial, f"failed (see {trial.error_file or 'Ray logs'})")

        @staticmethod
        def _say(search: SearchState, trial, outcome: str) -> None:
            search.finished += 1
            if search.echo:
                draw = describe_draw(trial.config)
                search.echo(f"trial {search.finished:>2}/{search.trials}  {trial.trial_id}  {outcome}  {draw}")

    TrialRuns.__module__, TrialRuns.__qualname__ = __name__, "TrialRuns"
    return TrialRuns


BUDGET_FILE = "budget.json"  # the search's time budget and the seconds its trials have used so far
# How stale BUDGET_FILE may be: a Ctrl-C records at most this much less than was used. A trial's first
# epoch can come within 5 s of the search's start, and a search stopped then recorded none of its time.
BUDGET_WRITE_SECONDS = 1.0


def _search_budget_class():
    """The Tune stopper that holds a search's time budget across `--resume`.

    Tune pickles its controller's stopper into the experiment state and a restored search runs on the
    restored one, so the budget counts the time of every run of the search, not of this process. The
    live stopper writes the seconds used to BUDGET_FILE (at most every BUDGET_WRITE_SECONDS, and when it runs out):
    `search` reads it to tell a search the budget ended from one Ctrl-C stopped. Built on first use
    (Ray is imported lazily) and registered as `vae.tune.trials.SearchBudget` so its pickles load.
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
            if out or now - self._written >= BUDGET_WRITE_SECONDS:
                self._written = now
                write_json(Path(self.folder) / BUDGET_FILE, {"seconds": self.seconds, "used": self.used})
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
