"""The runs an interrupted `vae run` marks KILLED (vae.registry.runs.runs_of_session) are found on every
page of MLflow's searches: a store with more experiments or runs than one page holds misses none."""

from __future__ import annotations

from vae.registry import runs


def test_runs_of_a_session_are_found_across_pages(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(runs, "SEARCH_PAGE", 2)  # pages of 2: 4 experiments, 5 runs of the session
    mlflow_client = runs.client(uri)
    mine, finished = [], []
    for number in range(3):
        experiment = mlflow_client.create_experiment(f"exp-{number}")
        for _ in range(2 if number else 1):
            mine.append(mlflow_client.create_run(experiment, tags={runs.SESSION_TAG: "s1"}).info.run_id)
        other = mlflow_client.create_run(experiment, tags={runs.SESSION_TAG: "s2"}).info.run_id
        done = mlflow_client.create_run(experiment, tags={runs.SESSION_TAG: "s1"}).info.run_id
        mlflow_client.set_terminated(done, "FINISHED")
        finished.append((other, done))
    assert runs.runs_of_session("s1", uri) == sorted(mine)
    assert len(mine) == 5 and not set(mine) & {run for pair in finished for run in pair}
