# The two quick-start commands: `make demo` and `make test`. Both set up .venv from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= atari,minatar,minigrid,labyrinth,bench,report,dev,ray
DEMO_CONFIG ?= configs/impala/minatar_breakout.yaml
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-fast lint clean peers

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Train the base agent on the default task, evaluate it, and write its learning curve.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/decoupled train $(DEMO_CONFIG) --run-dir $(DEMO_DIR)
	$(BIN)/decoupled eval $(DEMO_DIR) --episodes 30
	$(BIN)/decoupled plot $(DEMO_DIR)
	@echo "demo done: curve $(DEMO_DIR)/learning_curve.png, scores $(DEMO_DIR)/eval/scores.json"

# Every test, learning tests included (955 tests; about 24 minutes on 2 cores with the install).
test: install
	WANDB_MODE=offline WANDB_BASE_URL=http://127.0.0.1:9 $(BIN)/pytest -q

# The fast part only: no learning tests, no subprocess kill tests.
test-fast: install
	$(BIN)/pytest -q -m "not learning and not slow"

# The throughput peers of `decoupled bench throughput` (Sample Factory, CleanRL), each in a virtual environment of
# its own built from its pinned list in runners/bench/peers/ (their pins clash with ours); not needed by the tests.
PEER_VENVS ?= .venv-peers
PEERS := sample_factory cleanrl

$(PEER_VENVS)/%/.installed-stamp: runners/bench/peers/%.txt
	rm -rf $(PEER_VENVS)/$*
	$(PYTHON) -m venv $(PEER_VENVS)/$*
	$(PEER_VENVS)/$*/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

peers: $(foreach p,$(PEERS),$(PEER_VENVS)/$(p)/.installed-stamp)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(PEER_VENVS) .pytest_cache .ruff_cache *.egg-info
