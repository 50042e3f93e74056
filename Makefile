# The two commands a newcomer needs: `make run` and `make test`. Each sets up what it
# needs in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, from PyTorch's CPU index: on Linux, PyPI's torch is the CUDA build
# (gigabytes of NVIDIA libraries), the CPU index's is a few hundred MB. Where that index
# does not resolve, pip's own configuration (a find-links folder, a mirror) serves it.
# On a GPU machine: make TORCH_INDEX=https://download.pytorch.org/whl/cu130 ...
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
MODEL ?= tiny
WORKERS ?= 1
KEEP ?=
ARGS ?=

.PHONY: run test lint bench clean image base-image wheelhouse-torch test-image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip

$(VENV)/.run-deps: $(BIN)/python pyproject.toml
	if $(BIN)/python -c "import socket, urllib.parse as u; \
	    socket.getaddrinfo(u.urlsplit('$(TORCH_INDEX)').hostname, 443)" 2>/dev/null; then \
	  $(BIN)/pip install -q --disable-pip-version-check --extra-index-url "$(TORCH_INDEX)" \
	    "$(TORCH_SPEC)"; \
	else \
	  echo "$(TORCH_INDEX) is out of reach: torch comes from pip's configured sources"; \
	  $(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"; \
	fi
	$(BIN)/pip install -q --disable-pip-version-check -e ".[worker,local]"
	touch $@

$(VENV)/.test-deps: $(VENV)/.run-deps
	$(BIN)/pip install -q --disable-pip-version-check -e ".[worker,local,dev,infra]"
	touch $@

## The fleet on one machine: embedded S3+SQS, producer, worker(s), outputs in data/output_images.
## KEEP=1 keeps the embedded S3+SQS up afterwards (until Ctrl-C) for status, fetch, gallery.
run: $(VENV)/.run-deps
	$(BIN)/python -m local_fleet --input data/input_images \
		--output data/output_images --model $(MODEL) --workers $(WORKERS) \
		$(if $(KEEP),--keep) $(ARGS)

## The whole test suite (unit, engine, fleet integration, deployment artefacts) and the linter.
## Test files run in parallel processes (most of their time is waiting on worker
## processes and the S3/SQS server); a file's tests stay together, so a shared worker
## run is made once.
test: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .

bench: $(VENV)/.test-deps
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.overlap_bench
	$(BIN)/python -m bench.png_bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data/output_images/*

# --- the worker image (needs a Docker engine; `make test` never builds images) -------------
IMAGE ?= img2img-fleet-worker:local
EMULATOR_IMAGE ?= img2img-fleet-emulator:local
# Base of the CPU image (both stages). The default is made here from Debian packages when
# missing (mmdebstrap, as root; no image registry needed). With registry access,
# BASE_IMAGE=debian:bookworm-slim does the same.
LOCAL_BASE_IMAGE := img2img-base:bookworm
BASE_IMAGE ?= $(LOCAL_BASE_IMAGE)
DEBIAN_MIRROR ?= http://deb.debian.org/debian
# Debian bookworm's interpreter, and the CPU torch wheel built for it.
IMAGE_PYTHON ?= python3.11
TORCH_CPU_VERSION ?= 2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
WHEEL_PLATFORM ?= manylinux_2_28_x86_64
# Optional build secrets: a CA bundle for pip (default: the one your pip uses, PIP_CERT)
# and a pip configuration file (a private index). Neither is stored in the image.
CA_BUNDLE ?= $(PIP_CERT)
PIP_CONF ?=
# BuildKit (RUN --mount) needs a docker CLI with the buildx plugin (Docker 23+) or a 20.10
# CLI, which has BuildKit built in: the first such `docker` on PATH.
find_docker = for d in $$(which -a docker 2>/dev/null); do \
	  if "$$d" buildx version >/dev/null 2>&1; then echo "$$d"; exit; fi; \
	  case "$$("$$d" version --format '{{.Client.Version}}' 2>/dev/null)" in \
	    19.03*|20.10*) echo "$$d"; exit;; esac; \
	done; echo docker
DOCKER ?= $(shell $(find_docker))

CP_TAG = $(subst python,cp,$(subst .,,$(IMAGE_PYTHON)))
CPU_BUILD_ARGS = --build-arg BUILD_IMAGE=$(BASE_IMAGE) --build-arg CUDA_IMAGE=$(BASE_IMAGE) \
	--build-arg PYTHON=$(IMAGE_PYTHON) --build-arg TORCH_VERSION=$(TORCH_CPU_VERSION) \
	--build-arg TORCH_INDEX_URL= --build-arg XFORMERS_VERSION=
BUILD_SECRETS = $(if $(CA_BUNDLE),--secret id=ca$(comma)src=$(CA_BUNDLE)) \
	$(if $(PIP_CONF),--secret id=pipconf$(comma)src=$(PIP_CONF))
comma := ,

## The CPU worker image ($(IMAGE)) and the local fleet's S3+SQS emulator ($(EMULATOR_IMAGE)).
## An image a rebuild replaces is removed (unless a container uses it): each one left
## behind keeps gigabytes on disk, whole copies per layer on the vfs storage driver.
image: base-image wheelhouse-torch
	$(call build_replacing,$(IMAGE),runtime)
	$(call build_replacing,$(EMULATOR_IMAGE),emulator)

# build_replacing TAG,TARGET: build TARGET as TAG, then remove the image TAG named before.
define build_replacing
	@old=$$($(DOCKER) image inspect -f '{{.Id}}' $(1) 2>/dev/null || true); \
	DOCKER_BUILDKIT=1 $(DOCKER) build $(CPU_BUILD_ARGS) $(BUILD_SECRETS) --target $(2) -t $(1) . \
	&& new=$$($(DOCKER) image inspect -f '{{.Id}}' $(1)) \
	&& if [ -n "$$old" ] && [ "$$old" != "$$new" ]; then \
	  $(DOCKER) image rm "$$old" >/dev/null 2>&1 && echo "removed the replaced $(1) ($$old)" \
	  || echo "kept the replaced $(1) ($$old): a container still uses it"; fi
endef

## A Debian base with Python, made from Debian packages (no registry), unless it exists.
base-image:
	@if [ "$(BASE_IMAGE)" != "$(LOCAL_BASE_IMAGE)" ] || \
	    $(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1; then exit 0; fi; \
	command -v mmdebstrap >/dev/null || { echo "making $(BASE_IMAGE) needs mmdebstrap" \
	  "(apt-get install mmdebstrap); with registry access use BASE_IMAGE=debian:bookworm-slim"; \
	  exit 1; }; \
	echo "making $(BASE_IMAGE) with mmdebstrap from $(DEBIAN_MIRROR)"; \
	dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
	  bookworm "$$dir/base.tar" "deb $(DEBIAN_MIRROR) bookworm main" \
	  "deb $(DEBIAN_MIRROR) bookworm-updates main" \
	  "deb $(DEBIAN_MIRROR)-security bookworm-security main" && \
	$(DOCKER) import "$$dir/base.tar" $(BASE_IMAGE)

## The CPU torch wheel in wheelhouse/ (pip takes it from its find-links or TORCH_CPU_INDEX).
wheelhouse-torch: $(BIN)/python
	@ls wheelhouse/torch-$(TORCH_CPU_VERSION)-$(CP_TAG)-*.whl >/dev/null 2>&1 || \
	$(BIN)/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version $(subst python,,$(IMAGE_PYTHON)) --platform $(WHEEL_PLATFORM) \
		--extra-index-url $(TORCH_CPU_INDEX) -d wheelhouse "torch==$(TORCH_CPU_VERSION)"

## The image end to end on a Docker engine: the compose fleet, a stop mid-job, health,
## read-only root (tests/image/).
test-image: image $(VENV)/.test-deps
	IMG2IMG_IMAGE_TESTS=1 DOCKER="$(DOCKER)" IMG2IMG_BASE_IMAGE="$(BASE_IMAGE)" \
		$(BIN)/pytest -q -p no:cacheprovider -rA tests/image
