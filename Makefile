# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_DIR ?= models/small
STAMP := $(VENV)/.installed

.PHONY: venv run test test-quick bench proto clean

venv: $(STAMP)

# CPU build of torch where there is no CUDA (torch==2.13.0 lies on this disk);
# a normal torch install on CUDA machines.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(MODEL_DIR): $(STAMP)
	$(BIN)/splitserve make-model --preset small --out $(MODEL_DIR)

run: $(STAMP) $(MODEL_DIR)
	$(BIN)/splitserve generate --model $(MODEL_DIR) --prompt "The capital of France is" --max-tokens 24

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_throughput.py

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) models

.PHONY: helm-goldens
# Re-render the Helm chart's golden files (tests/helm/golden/) and its README values table.
helm-goldens: $(STAMP)
	$(BIN)/python scripts/render_helm_goldens.py
