# The two commands: `make demo` and `make test`. Everything else is set up on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-deepspeed lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first: the CPU build on this kind of machine, the CUDA build on a GPU user's machine; torchvision
	# pinned to the release built for it (the vlm extra; unpinned, pip would upgrade torch to fit a newer one).
	$(BIN)/pip install torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -e ".[test,bench,export,vlm]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/dymoe demo $(ARGS)

# DYMOE_REQUIRE_VLM=1: the families that need the vlm extra fail instead of skipping when it is missing
test: $(STAMP)
	HF_HUB_OFFLINE=1 DYMOE_REQUIRE_VLM=1 $(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_layer.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# The DeepSpeed ZeRO-2 path on CPU (two gloo processes): installs the optional extra, then runs its test.
test-deepspeed: $(STAMP)
	$(BIN)/pip install -e ".[deepspeed]"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/runner/test_multiprocess.py -k deepspeed
