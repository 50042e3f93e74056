#
# img2img fleet worker image. One file, two builds:
#
#   docker build -t img2img-fleet-worker .        # CUDA (the default): what ECS runs
#   make image                                    # CPU: img2img-fleet-worker:local
#   docker build --build-arg PREFETCH_MODELS="stabilityai/sd-turbo" -t img2img-fleet-worker:sd-turbo .
#
# BuildKit is required (RUN --mount): the default builder since Docker 23; on Docker 20.10
# set DOCKER_BUILDKIT=1. There is deliberately no `# syntax=` line: the Dockerfile frontend
# built into BuildKit is enough, and naming one makes the build pull it from a registry.
#
# CUDA build (defaults): the CUDA base, the torch wheel built for that CUDA (cu130) and the
# xformers release built against that torch move together; change them as a set.
#   CUDA 13.0 needs an NVIDIA driver >= 580 on the host; for an older driver, override
#   CUDA_IMAGE and TORCH_INDEX_URL with a matching CUDA 12.x pair (see docs/deploy.md).
# torch's wheels (PyPI's torch 2.13.0 is the CUDA 13.0 build too) carry every CUDA library
# they load: cuBLAS, cuDNN, the runtime, NCCL. So the base is CUDA's `-base-` image, which
# adds only the driver contract (NVIDIA_REQUIRE_CUDA, NVIDIA_* variables) to Ubuntu; a
# `-runtime-` base would ship a second copy of those libraries that nothing loads.
#
# Layers: the virtualenv of dependencies (gigabytes) and the project (/opt/project,
# megabytes) are separate layers of the runtime image, so a code change is a small push and
# a small pull; only a dependency or base change moves the big layer. Measured sizes:
# docs/deploy.md (section 4).
#
# CPU build (`make image`, docker-compose.yml): a Debian base for both stages and the CPU
# torch wheel, no xformers:
#   --build-arg BUILD_IMAGE=debian:bookworm-slim --build-arg CUDA_IMAGE=debian:bookworm-slim
#   --build-arg PYTHON=python3.11 --build-arg TORCH_VERSION=2.13.0+cpu
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg XFORMERS_VERSION=
#
# Optional inputs, none of them stored in a layer:
#   wheelhouse/                            wheels pip prefers to downloading them (air-gapped
#                                          builds, a local torch wheel; see wheelhouse/README.md)
#   --secret id=ca,src=BUNDLE.pem          CA bundle for pip (a TLS-inspecting proxy)
#   --secret id=pipconf,src=pip.conf       pip configuration (a private index, credentials)
# The S3+SQS emulator of the local fleet is the `emulator` target of this file.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG BUILD_IMAGE=ubuntu:24.04
# The interpreter, as the distribution names its package and command (3.11 or newer).
# It must be the same in BUILD_IMAGE and CUDA_IMAGE: the virtualenv links to it.
ARG PYTHON=python3.12

# ---------------------------------------------------------------------------------------
# python-base: the build image with the interpreter and venv support
# ---------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS python-base
ARG PYTHON

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Skipped when the base image already has the interpreter (a locally made base image).
# The distro release is pinned by the image tag; package versions follow its security updates.
# hadolint ignore=DL3008
RUN if ! command -v "${PYTHON}" >/dev/null || ! "${PYTHON}" -c 'import ensurepip' 2>/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# ---------------------------------------------------------------------------------------
# build: resolve and install every wheel into a self-contained virtualenv
# ---------------------------------------------------------------------------------------
FROM python-base AS build
ARG PYTHON
ARG TORCH_VERSION=2.13.0
# Empty: no xformers (CPU builds).
ARG XFORMERS_VERSION=0.0.35
ARG DIFFUSERS_VERSION=0.42.1
ARG TRANSFORMERS_VERSION=5.24.0
ARG ACCELERATE_VERSION=1.15.0
# The index torch (and xformers) come from, searched besides pip's own index (PyPI unless a
# pipconf secret says otherwise). Empty: torch comes from the wheelhouse or pip's index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

# The project goes into its own folder, /opt/project, not into the virtualenv: the runtime
# stage copies the two separately, so a code change makes a new layer of megabytes while
# the virtualenv's gigabytes (torch, CUDA libraries) stay the layer a host already has.
# A .pth file in the virtualenv puts the folder on sys.path; the project's console scripts
# (img2img-worker, ...) land in /opt/project/bin.
RUN "${PYTHON}" -m venv /opt/venv \
 && /opt/venv/bin/python -c 'import pathlib, sysconfig; \
pathlib.Path(sysconfig.get_paths()["purelib"], "img2img-project.pth").write_text("/opt/project\n")'
ENV PATH=/opt/venv/bin:$PATH

# Every dependency, pinned and resolved together, before any of the project's code: this
# layer survives code edits and is rebuilt only when pyproject.toml or a pin changes.
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=ca \
    --mount=type=secret,id=pipconf \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"] \
+ p["project"]["optional-dependencies"]["worker"]))' > /tmp/requirements.txt \
    && pip install --find-links /wheelhouse ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
      -r /tmp/requirements.txt \
      "torch==${TORCH_VERSION}" \
      ${XFORMERS_VERSION:+"xformers==${XFORMERS_VERSION}"} \
      "diffusers==${DIFFUSERS_VERSION}" \
      "transformers==${TRANSFORMERS_VERSION}" \
      "accelerate==${ACCELERATE_VERSION}"

# ---------------------------------------------------------------------------------------
# project: the project itself: no network, no dependency changes (pip check proves they
# are met). The sources arrive by a bind mount of the context (.dockerignore's allow-list
# says what is in it), not one COPY per package: every layer is a full copy of the
# filesystem on storage drivers without overlays (vfs), so each COPY here would cost the
# size of the virtualenv.
# ---------------------------------------------------------------------------------------
FROM build AS project
ENV PATH=/opt/project/bin:$PATH
RUN --mount=type=bind,target=/src/project,rw \
    pip install --no-deps --no-build-isolation --no-index --target /opt/project ./project \
 && pip check \
 && img2img-worker --help >/dev/null

# ---------------------------------------------------------------------------------------
# emulator: the S3+SQS emulator (moto server) for the local fleet; not deployed anywhere
# ---------------------------------------------------------------------------------------
FROM python-base AS emulator
ARG PYTHON
ARG MOTO_VERSION=5.2.5

RUN --mount=type=secret,id=ca \
    --mount=type=secret,id=pipconf \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    "${PYTHON}" -m venv /opt/moto \
    && /opt/moto/bin/pip install "moto[server]==${MOTO_VERSION}"

ENV PATH=/opt/moto/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=2s --timeout=5s --retries=30 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/moto-api/')"]
ENTRYPOINT ["python", "-m", "moto.server", "--host", "0.0.0.0", "--port", "5000"]

# ---------------------------------------------------------------------------------------
# runtime: the base (CUDA by default) + Python + the virtualenv; no compilers, no pip
# cache, no sources. The last stage, so a build without --target makes it.
# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
ARG PYTHON

# Names of models (hub ids) to download into the image at build time. Empty (default):
# nothing is baked in, weights are fetched at run time into the /models volume.
ARG PREFETCH_MODELS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/project/bin:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/huggingface \
    IMG2IMG_MODEL_CACHE=/models/img2img \
    IMG2IMG_HEALTH_FILE=/tmp/img2img-worker.health \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The interpreter and CA certificates, unless the base image has them already.
# hadolint ignore=DL3008
RUN if ! command -v "${PYTHON}" >/dev/null || [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends "${PYTHON}" ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin worker \
 && mkdir -p /models/huggingface /models/img2img \
 && chown -R 10001:10001 /models

# Dependencies first (gigabytes, unchanged by code edits), then the project (megabytes).
COPY --from=build /opt/venv /opt/venv
COPY --from=project /opt/project /opt/project

# Numeric, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/worker

# Optional: bake weights into the image (safetensors only). Runs before VOLUME, so the
# files stay in the image and seed a fresh /models volume.
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
