# CPU image by default; for GPUs build with a CUDA base and the matching torch index, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# (compose.yaml: VAE_BASE_IMAGE and VAE_TORCH_INDEX_URL). A base without Python (the CUDA images)
# gets Debian/Ubuntu's python3 and venv; everything installs into the virtualenv /opt/venv, since
# Ubuntu 24.04's system pip refuses installs (PEP 668).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VAE_HOME=/data/vae PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true

RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/venv

# Non-root; /data/vae (a volume in compose.yaml) holds datasets, checkpoints, the MLflow auth
# database and the Prefect server's database, so its subfolders must belong to `vae`. Ubuntu
# images already have a user with uid 1000 (`ubuntu`): it is renamed rather than duplicated.
RUN if getent passwd 1000 >/dev/null; then \
      usermod --login vae --home /home/vae --move-home "$(getent passwd 1000 | cut -d: -f1)" \
      && groupmod --new-name vae "$(getent group 1000 | cut -d: -f1)"; \
    else useradd --create-home --uid 1000 vae; fi \
 && mkdir -p /data/vae/mlflow-auth /data/vae/prefect-server \
 && chown -R vae:vae /data/vae
WORKDIR /app
COPY --chown=vae:vae pyproject.toml constraints.txt README.md ./
COPY --chown=vae:vae vae ./vae
COPY --chown=vae:vae flows ./flows
COPY --chown=vae:vae pipelines.yaml ./
COPY --chown=vae:vae deploy ./deploy
# cluster: PostgreSQL's driver for the MLflow server (compose runs it from this image).
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install -c constraints.txt '.[cluster]'

USER vae
# Credentials and service addresses come from the environment at run time, never the image.
# compose.yaml runs the servers and workers from this image with their own commands.
ENTRYPOINT ["vae"]
CMD ["run", "digits"]
