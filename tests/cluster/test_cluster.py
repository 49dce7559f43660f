"""Cluster mode on loopback: a Prefect server and process worker, a two-node Ray cluster and an
MLflow server (basic auth) on PostgreSQL, all started with compose.yaml's commands; then
`vae deploy` and `prefect deployment run 'pipeline/digits'`.

It checks that a client without credentials is refused by each of the three, that the flow run
completed in Prefect, that training ran on the Ray cluster (its train workers are actors of that
cluster), and that the registry holds the new version as champion. Everything is torn down after.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.loopback_cluster import REPO, Services, compose_config, free_ports, kill_matching, wait_for_http
from tests.helpers.services import postgres

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _request(
    url: str, *, method: str = "GET", body: dict | None = None, headers: dict | None = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@pytest.fixture(scope="module")
def cluster():
    workdir = Path(tempfile.mkdtemp(prefix="vae-cl-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    prefect_port, mlflow_port, ray_port, dashboard_port, head_agent, worker_agent, client_port = free_ports(7)
    credentials = {
        "PREFECT_SERVER_API_AUTH_STRING": f"vae:{secrets.token_hex(16)}",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_hex(16),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "POSTGRES_PASSWORD": "unused-trust-auth-on-loopback",
    }
    services = None
    with postgres() as database_url:
        try:
            config = compose_config(
                {
                    **credentials,
                    "VAE_HOME": str(workdir / "vae"),
                    "VAE_APP_DIR": str(REPO),
                    "VAE_PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                    "VAE_PREFECT_HOST": "127.0.0.1",
                    "VAE_PREFECT_PORT": str(prefect_port),
                    "VAE_PREFECT_SERVER_HOME": str(workdir / "prefect-server"),
                    "VAE_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                    "VAE_MLFLOW_HOST": "127.0.0.1",
                    "VAE_MLFLOW_PORT": str(mlflow_port),
                    "VAE_MLFLOW_BACKEND_STORE_URI": database_url,
                    "VAE_MLFLOW_ARTIFACTS": str(workdir / "mlartifacts"),
                    "VAE_MLFLOW_AUTH_DIR": str(workdir / "mlflow-auth"),
                    "VAE_MLFLOW_AUTH_CONFIG": str(REPO / "deploy" / "mlflow-auth.ini"),
                    "VAE_RAY_ADDRESS": f"127.0.0.1:{ray_port}",
                    "VAE_RAY_PORT": str(ray_port),
                    "VAE_RAY_DASHBOARD_HOST": "127.0.0.1",
                    "VAE_RAY_DASHBOARD_PORT": str(dashboard_port),
                    "VAE_RAY_HEAD_AGENT_PORT": str(head_agent),
                    "VAE_RAY_WORKER_AGENT_PORT": str(worker_agent),
                    "VAE_RAY_CLIENT_PORT": str(client_port),
                    "VAE_RAY_CPUS_PER_NODE": "2",
                    "VAE_RAY_TEMP_DIR": str(workdir / "ray"),
                }
            )
            services = Services(workdir, config)
            prefect_server = services.start("prefect-server")
            mlflow = services.start("mlflow")
            services.start("ray-head")
            prefect_api = f"http://127.0.0.1:{prefect_port}/api"
            wait_for_http(f"{prefect_api}/health", 180, prefect_server, workdir / "prefect-server.log")
            services.start("ray-worker")
            services.start("prefect-worker")
            wait_for_http(f"http://127.0.0.1:{mlflow_port}/health", 240, mlflow, workdir / "mlflow.log")
            yield {
                "services": services,
                "credentials": credentials,
                "workdir": workdir,
                "prefect_api": prefect_api,
                "mlflow": f"http://127.0.0.1:{mlflow_port}",
                "dashboard": f"http://127.0.0.1:{dashboard_port}",
            }
        finally:
            if services is not None:
                services.stop()
            kill_matching(str(workdir))
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_ray_nodes(cluster, count: int, timeout: float = 180) -> list[dict]:
    token = {"Authorization": f"Bearer {cluster['credentials']['RAY_AUTH_TOKEN']}"}
    deadline = time.time() + timeout
    while True:
        try:
            status, body = _request(f"{cluster['dashboard']}/api/v0/nodes?limit=100", headers=token)
        except OSError:
            status, body = 0, ""
        if status == 200:
            nodes = [n for n in json.loads(body)["data"]["result"]["result"] if n["state"] == "ALIVE"]
            if len(nodes) >= count:
                return nodes
        if time.time() > deadline:
            raise AssertionError(
                f"Ray cluster: {count} alive nodes not seen in {timeout} s "
                f"(last: {status} {body[:300]}); head log: {cluster['services'].log('ray-head')}"
            )
        time.sleep(1)


def test_clients_without_credentials_are_refused(cluster):
    _wait_for_ray_nodes(cluster, 2)
    # Prefect: the API answers only with the auth string (health stays open for probes).
    assert _request(f"{cluster['prefect_api']}/flows/filter", method="POST", body={})[0] == 401
    auth = _basic(cluster["credentials"]["PREFECT_SERVER_API_AUTH_STRING"])
    assert _request(f"{cluster['prefect_api']}/flows/filter", method="POST", body={}, headers=auth)[0] == 200
    # MLflow: the REST API needs basic auth.
    search = f"{cluster['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _request(search)[0] == 401
    admin = _basic(f"admin:{cluster['credentials']['MLFLOW_AUTH_ADMIN_PASSWORD']}")
    assert _request(search, headers=admin)[0] == 200
    # Ray: job submission without the token is refused; with it, a job runs on both nodes.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "job",
            "submit",
            "--address",
            cluster["dashboard"],
            "--",
            sys.executable,
            "-c",
            "print('should not run')",
        ],
        env=bare,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr
    assert _request(f"{cluster['dashboard']}/api/jobs/")[0] == 401
    with_token = {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster["credentials"]["RAY_AUTH_TOKEN"]}
    accepted = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "job",
            "submit",
            "--address",
            cluster["dashboard"],
            "--",
            sys.executable,
            "-c",
            "import ray; ray.init(); print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))",
        ],
        env=with_token,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    assert "alive nodes: 2" in accepted.stdout


@pytest.fixture(scope="module")
def deployed_run(cluster):
    """`vae deploy` (compose's deploy service), then `prefect deployment run 'pipeline/digits' --watch`."""
    services: Services = cluster["services"]
    _wait_for_ray_nodes(cluster, 2)
    client_env = services.environment("deploy")
    spec = services.config["services"]["deploy"]
    deploy = subprocess.run(
        [*spec["command"], "--pipeline", "digits"],
        cwd=spec["working_dir"],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    run = subprocess.run(
        ["prefect", "deployment", "run", "pipeline/digits", "--watch", "--watch-timeout", "900"],
        cwd=spec["working_dir"],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=960,
    )
    return deploy, run


def test_deploy_then_deployment_run_trains_on_ray_and_registers(cluster, deployed_run):
    deploy, run = deployed_run
    services: Services = cluster["services"]
    assert "pipeline/digits" in deploy.stdout and "embed/digits" in deploy.stdout
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + services.log("prefect-worker")

    # Prefect: one flow run of the deployment, completed.
    auth = _basic(cluster["credentials"]["PREFECT_SERVER_API_AUTH_STRING"])
    status, body = _request(f"{cluster['prefect_api']}/deployments/name/pipeline/digits", headers=auth)
    assert status == 200, body
    deployment = json.loads(body)
    assert deployment["work_pool_name"] == "vae"
    status, body = _request(
        f"{cluster['prefect_api']}/flow_runs/filter",
        method="POST",
        headers=auth,
        body={"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}},
    )
    runs = json.loads(body)
    assert [r["state_type"] for r in runs] == ["COMPLETED"]

    # Ray: the training workers were actors of this cluster.
    token = {"Authorization": f"Bearer {cluster['credentials']['RAY_AUTH_TOKEN']}"}
    status, body = _request(f"{cluster['dashboard']}/api/v0/actors?limit=1000&detail=1", headers=token)
    assert status == 200, body
    actors = json.loads(body)["data"]["result"]["result"]
    workers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
    assert len(workers) >= 2  # pipelines.yaml: digits trains on 2 workers
    nodes = {n["node_id"] for n in _wait_for_ray_nodes(cluster, 2)}
    assert {a["node_id"] for a in workers} <= nodes

    # MLflow on PostgreSQL: the new version, champion of an empty registry, from a finished run.
    admin = _basic(f"admin:{cluster['credentials']['MLFLOW_AUTH_ADMIN_PASSWORD']}")
    status, body = _request(
        f"{cluster['mlflow']}/api/2.0/mlflow/registered-models/alias?"
        + urllib.parse.urlencode({"name": "vae-digits", "alias": "champion"}),
        headers=admin,
    )
    assert status == 200, body
    version = json.loads(body)["model_version"]
    assert version["version"] == "1"
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert float(tags["test_nll"]) > 0 and tags["k"] == "5000"
    status, body = _request(f"{cluster['mlflow']}/api/2.0/mlflow/runs/get?run_id={version['run_id']}", headers=admin)
    assert json.loads(body)["run"]["info"]["status"] == "FINISHED"
