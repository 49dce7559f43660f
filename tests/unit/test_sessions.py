"""The in-process session keeps checkpoints as Ray Train's CheckpointConfig does: the newest
`num_to_keep`, or with a score the best `num_to_keep` by it, and always the newest."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vae.train.sessions import InProcessSession


def _report_epochs(session: InProcessSession, tmp_path: Path, scores: list[float]) -> list[str]:
    paths = []
    for epoch, score in enumerate(scores, start=1):
        source = tmp_path / f"source-{epoch}"
        source.mkdir()
        (source / "checkpoint.pt").write_text(str(epoch))
        session.report({"epoch": epoch, "validation_elbo": score}, str(source))
        paths.append(session.latest)
    return paths


def _epochs_on_disk(run_dir: Path) -> list[int]:
    return sorted(int((path / "checkpoint.pt").read_text()) for path in run_dir.glob("checkpoint_*"))


def test_without_a_score_the_newest_are_kept(tmp_path):
    session = InProcessSession(tmp_path / "run", num_to_keep=2)
    _report_epochs(session, tmp_path, [-5.0, -4.0, -6.0, -7.0])
    assert _epochs_on_disk(tmp_path / "run") == [3, 4]
    assert [int(Path(kept.path, "checkpoint.pt").read_text()) for kept in session.kept] == [3, 4]


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([-5.0, -4.0, -6.0, -7.0], [1, 2, 4]),  # the best two by score, and the newest
        ([-5.0, -4.0, -3.0, -2.0], [3, 4]),  # the newest is among the best
        ([-5.0, math.nan, -6.0, -4.0], [1, 4]),  # NaN ranks last
    ],
)
def test_with_a_score_the_best_and_the_newest_are_kept(tmp_path, scores, expected):
    session = InProcessSession(tmp_path / "run", num_to_keep=2, score="validation_elbo")
    _report_epochs(session, tmp_path, scores)
    assert _epochs_on_disk(tmp_path / "run") == expected


def test_every_checkpoint_is_kept_without_a_limit_and_metrics_reach_the_caller(tmp_path):
    seen = []
    session = InProcessSession(tmp_path / "run", num_to_keep=None, on_metrics=seen.append)
    session.epoch_done({"epoch": 1})
    session.report({"epoch": 1}, None)  # a rank without a checkpoint: nothing persisted
    _report_epochs(session, tmp_path, [-3.0, -2.0, -1.0])
    assert seen == [{"epoch": 1}] and _epochs_on_disk(tmp_path / "run") == [1, 2, 3]
    assert not list((tmp_path / "run").glob(".*"))  # no partial copy left behind
