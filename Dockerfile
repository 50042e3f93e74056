# syntax=docker/dockerfile:1
#
# img2img fleet worker image.
#
#   docker build -t img2img-fleet-worker .
#   docker build --build-arg PREFETCH_MODELS="stabilityai/sd-turbo" -t img2img-fleet-worker:sd-turbo .
#
# Versions move together: the CUDA base, the torch wheel built for that CUDA (cu130) and the
# xformers release built against that torch. Change them as a set.
#   CUDA 13.0 needs an NVIDIA driver >= 580 on the host; for an older driver, override
#   CUDA_IMAGE and TORCH_INDEX_URL with a matching CUDA 12.x pair (see docs/deploy.md).
# torch's wheels carry their own cuBLAS/cuDNN; the CUDA image provides the driver contract
# (NVIDIA_REQUIRE_CUDA, NVIDIA_* variables) and the runtime libraries.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG BUILD_IMAGE=ubuntu:24.04

# ---------------------------------------------------------------------------------------
# build: resolve and install every wheel into a self-contained virtualenv
# ---------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG XFORMERS_VERSION=0.0.35
ARG DIFFUSERS_VERSION=0.42.1
ARG TRANSFORMERS_VERSION=5.24.0
ARG ACCELERATE_VERSION=1.15.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The distro release is pinned by the image tag; package versions follow its security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Heavy, pinned dependencies first: this layer survives edits to the project's code.
# torch and xformers come from the CUDA-specific index; the rest from PyPI.
RUN pip install \
      --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
      "torch==${TORCH_VERSION}" \
      "xformers==${XFORMERS_VERSION}" \
      "diffusers==${DIFFUSERS_VERSION}" \
      "transformers==${TRANSFORMERS_VERSION}" \
      "accelerate==${ACCELERATE_VERSION}"

# Build the project's wheel, then install it with the worker and xformers extras; the pins
# above stay in force because pip keeps already-satisfied requirements.
WORKDIR /src
# README.md* : the readme is optional for the build (a glob that may match nothing).
COPY pyproject.toml README.md* ./
COPY contract/ contract/
COPY worker/ worker/
COPY producer/ producer/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install \
      --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
      "$(find /wheels -name 'img2img_fleet-*.whl')[worker,xformers]" \
      "torch==${TORCH_VERSION}" "xformers==${XFORMERS_VERSION}" \
 && pip check

# ---------------------------------------------------------------------------------------
# runtime: CUDA base + Python + the virtualenv; no compilers, no pip cache, no sources
# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime

# Names of models (hub ids) to download into the image at build time. Empty (default):
# nothing is baked in, weights are fetched at run time into the /models volume.
ARG PREFETCH_MODELS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/huggingface \
    IMG2IMG_MODEL_CACHE=/models/img2img \
    IMG2IMG_HEALTH_FILE=/tmp/img2img-worker.health \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin worker \
 && mkdir -p /models/huggingface /models/img2img \
 && chown -R 10001:10001 /models

COPY --from=build /opt/venv /opt/venv

# Numeric, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/worker

# Optional: bake weights into the image (safetensors only). Runs before VOLUME, so the
# files stay in the image and seed a fresh /models volume.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [ -n "${PREFETCH_MODELS}" ]; then \
      python -c 'import sys; from huggingface_hub import snapshot_download; [snapshot_download(m, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]) for m in sys.argv[1:]]' ${PREFETCH_MODELS}; \
    fi

VOLUME ["/models"]

# Exit 0 only while the worker's loop makes progress; start period covers model loading.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
  CMD ["img2img-worker", "healthcheck"]

# ECS sends SIGTERM, then SIGKILL after stopTimeout (120 s); the worker's stop deadline
# (IMG2IMG_STOP_DEADLINE, 100 s) keeps it inside that window.
STOPSIGNAL SIGTERM
# Flags for `serve` (e.g. --exit-when-idle 300) go in the command: `docker run IMAGE --max-jobs 10`.
ENTRYPOINT ["img2img-worker", "serve"]
CMD []
