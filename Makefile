# The README's commands. Everything installs on first use: the .venv, and Fashion-MNIST
# (Debian package dataset-fashion-mnist) for the demo and the tests.
PY      := .venv/bin/python
STAMP   := .venv/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SHARDS  := data/fashion-mnist-32
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export WANDB_SILENT := true

.PHONY: setup demo test bench lint clean

setup: $(STAMP) $(FMNIST)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(FMNIST):
	@command -v apt-get >/dev/null || { echo "Fashion-MNIST is missing: install the package dataset-fashion-mnist (Debian/Ubuntu) or copy its IDX files to $(dir $(FMNIST))"; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# SimMIM pretraining -> fine-tuning -> evaluation of a small SwinV2 on Fashion-MNIST shards, with two
# DDP workers of one thread each (faster on 2 cores than one process with two threads).
SHARDS_CLI := $(PY) -m train.data.shards_cli fashion-mnist --pad 32 --samples-per-shard 5000 --no-progress
DEMO_RUN   := NPROC=2 launch/single_node.sh strategy=ddp
demo: setup
	$(SHARDS_CLI) $(SHARDS)/train --split train --prefix train
	$(SHARDS_CLI) $(SHARDS)/test --split test --prefix test
	$(DEMO_RUN) experiment=demo_simmim
	$(DEMO_RUN) experiment=demo_finetune
	$(DEMO_RUN) experiment=demo_eval

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_model.py
	$(PY) bench/bench_data.py

lint: setup
	$(PY) -m ruff check swinv2 train tests bench

clean:  # the venv and the demo's runs and shards; other runs are yours
	rm -rf .venv runs/demo $(SHARDS)
