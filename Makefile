# imgclf — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install's metadata comes from pyproject.toml and the version in components/__init__.py: either
# changing re-installs.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml components/__init__.py | cksum | cut -d' ' -f1)
SAMPLE := data/fashion-mnist-sample
# The embedded sample is 28x28 grayscale: train at its native size.
RUN_ARGS ?= --data $(SAMPLE) --image-size 28 --color-mode grayscale --epochs 15 --batch-size 64
# `make run RUN_FLAGS=` shows kfp.local's full executor logs; RUN_FLAGS="--quiet --cache" reuses unchanged tasks.
RUN_FLAGS ?= --quiet
PIPELINE_ROOT ?= runs
PYTEST_ARGS ?=
DOCKER_ENV := containers/docker-env.sh
REGISTRY ?=
# `make bench BENCH_ARGS=--quick` checks the scripts in a few minutes (figures meaningless).
BENCH_ARGS ?=
# `make bench-scale SCALE_SIZES=10k,100k` leaves out the 1M step (empty: 10k,100k,1M; 200,400,800 with --quick).
SCALE_SIZES ?=

.DEFAULT_GOAL := help
.PHONY: help install system-packages run run-docker images push compile test test-fast test-unit lint docs docs-site bench bench-scale bench-gpu sample-data fashion-mnist-full clean

help: ## list every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# TF Serving's PredictionLog classes (warm-up requests). Its wheel depends on `tensorflow`, which must
# not be installed beside tensorflow-cpu: hence --no-deps, outside pyproject.
SERVING_API := tensorflow-serving-api==2.21.0
SERVING_STAMP := $(VENV)/.serving-api-2.21.0

install: $(STAMP) $(SERVING_STAMP) ## create .venv and install imgclf with its pinned dependencies (runs once)

$(STAMP): pyproject.toml components/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

$(SERVING_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(SERVING_API)
	touch $@

run: install ## run ingest -> preprocess -> train -> evaluate -> export locally on the embedded sample
	$(BIN)/imgclf run $(RUN_ARGS) $(RUN_FLAGS) --pipeline-root $(PIPELINE_ROOT)

images: ## build both images, CPU and GPU (CUDA wheels: ~3 GB downloaded once), on the local Debian base (starts dockerd if none runs)
	$(DOCKER_ENV) with $(DOCKER_ENV) images

push: ## tag and push both images: make push REGISTRY=us-docker.pkg.dev/PROJECT/REPO (or ghcr.io/OWNER)
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=us-docker.pkg.dev/PROJECT/REPO"; exit 2; }
	$(DOCKER_ENV) with $(DOCKER_ENV) push $(REGISTRY)

run-docker: install ## the same run as `make run`, every task in our CPU image via kfp.local's DockerRunner (no network)
	$(DOCKER_ENV) with bash -c '$(DOCKER_ENV) build cpu && \
		$(BIN)/imgclf run --runner docker --network none $(RUN_ARGS) --pipeline-root $(PIPELINE_ROOT)'

# The images a cluster pulls: make compile IMAGE=us-docker.pkg.dev/P/R/imgclf:0.2.0 GPU_IMAGE=.../imgclf-gpu:0.2.0
IMAGE ?=
GPU_IMAGE ?=
compile: install ## compile the pipeline to build/imgclf-training.yaml (IMAGE=, GPU_IMAGE=: images the cluster pulls)
	@if [ -z "$(IMAGE)" ]; then echo "no IMAGE=...: compiling with the local image names (--allow-local-image), for a cluster that has them loaded"; fi
	$(BIN)/imgclf compile -o build/imgclf-training.yaml $(if $(IMAGE),--image $(IMAGE),--allow-local-image) $(if $(GPU_IMAGE),--gpu-image $(GPU_IMAGE))

# Debian packages the tests need beyond what containers/docker-env.sh installs for the container tests:
# Fashion-MNIST for the benchmark tests, Chromium for the report-page checks. Waits for apt's lock; stops at the first step that fails.
DEBIAN_PACKAGES := dataset-fashion-mnist chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3

system-packages: ## install the Debian packages the tests need (dataset-fashion-mnist, chromium) if missing
	@set -e; missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing from Debian"; \
		n=0; until $(APT) update -qq >/dev/null; do n=$$((n + 1)); [ $$n -lt 60 ] || \
			{ echo "apt-get update failed 60 times"; exit 1; }; echo "apt-get update failed; retrying in 10 s"; sleep 10; done; \
		DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends $$missing >/dev/null; \
		for p in $$missing; do dpkg -s $$p >/dev/null 2>&1 || { echo "$$p is still not installed"; exit 1; }; done; \
	fi

test: install system-packages ## run the whole test suite (what CI runs)
	$(BIN)/pytest $(PYTEST_ARGS)

# Every test that needs chromium or dataset-fashion-mnist is marked slow, so neither lane below needs apt or root.
test-fast: install ## every test not marked slow: no whole-pipeline, container or long training runs, no apt (minutes)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-unit: install ## the unit lane: no servers, no training, no containers, no kfp.local runs (under a minute)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: install ## ruff check over the whole tree (rules in pyproject.toml; CI runs it first)
	$(BIN)/ruff check .

docs: install ## regenerate the generated text: the reference pages (parameters, resources, CLI), then the KFP faces (component.py, *_face.py)
	$(BIN)/python -m imgclf.pipelines.docs
	$(BIN)/python -m imgclf.components.kfp_glue.generate

docs-site: install ## build the documentation site into build/site with mkdocs --strict (a broken link fails)
	$(BIN)/mkdocs build --strict

bench: install system-packages ## CPU benchmarks: end to end and input vs the notebook scripts (ImageDataGenerator, image_dataset_from_directory), ingest and predict speed vs issue 17's goals, training, steps; tables in build/bench (~65 min)
	$(BIN)/python -m benchmarks.end_to_end $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.input_throughput $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.training_throughput $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.feature_cache $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.steps_scaling $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.storage_ingest $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.preprocess_shards $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.step_speed $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.label_audit $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.summary

bench-scale: install ## synthetic 24 px images at 10k, 100k, 1M (SCALE_SIZES=) through ingest, preprocess, one train epoch (10k/100k): time, memory, growth exponents, the ImageNet-1k plan; into docs/performance.md
	$(BIN)/python -m benchmarks.scale $(if $(SCALE_SIZES),--sizes $(SCALE_SIZES)) $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.summary --only scale $(BENCH_ARGS)

# No install: the GPU machine has JAX (CUDA), Keras and NumPy, not our TensorFlow venv.
bench-gpu: ## GPU training images/s on KERAS_BACKEND=jax (needs jax[cuda], keras; real input from make bench)
	KERAS_BACKEND=jax $(PYTHON) -m benchmarks.gpu_training $(BENCH_ARGS)

sample-data: install system-packages ## regenerate data/fashion-mnist-sample from Debian's dataset-fashion-mnist (500 per class)
	rm -rf $(SAMPLE)
	$(BIN)/imgclf sample-data --out $(SAMPLE) --per-class 500 --seed 42

fashion-mnist-full: install system-packages ## write all 70,000 Fashion-MNIST images to build/fashion-mnist-full
	$(BIN)/imgclf sample-data --out build/fashion-mnist-full --per-class 0

clean: ## remove local runs and build outputs (keeps .venv)
	rm -rf $(PIPELINE_ROOT) build .pytest_cache
