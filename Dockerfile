# CPU image by default; for GPUs build with a CUDA base and the matching torch index, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VAE_HOME=/data/vae \
    PREFECT_SERVER_ANALYTICS_ENABLED=false RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true

# Non-root; /data/vae (a volume in compose.yaml) holds datasets, checkpoints, the MLflow auth
# database and the Prefect server's database, so its subfolders must belong to `vae`.
RUN useradd --create-home --uid 1000 vae \
 && mkdir -p /data/vae/mlflow-auth /data/vae/prefect-server \
 && chown -R vae:vae /data/vae
WORKDIR /app
COPY --chown=vae:vae pyproject.toml constraints.txt README.md ./
COPY --chown=vae:vae vae ./vae
COPY --chown=vae:vae flows ./flows
COPY --chown=vae:vae pipelines.yaml ./
COPY --chown=vae:vae deploy ./deploy
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install -c constraints.txt .

USER vae
# Credentials and service addresses come from the environment at run time, never the image.
# compose.yaml runs the servers and workers from this image with their own commands.
ENTRYPOINT ["vae"]
CMD ["run", "digits"]
