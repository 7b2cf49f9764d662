# Two commands do all the set-up: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TYPINGS := $(VENV)/typings

.PHONY: test demo soak bench typecheck clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --target $(TYPINGS)/esp32 micropython-esp32-stubs==1.29.0.post1
	$(PY) -m pip install -q --target $(TYPINGS)/rp2 micropython-rp2-rpi-pico-w-stubs==1.29.0.post1
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not soak and not hardware"

soak: $(STAMP)
	$(PY) -m pytest -q -m soak

demo: $(STAMP)
	$(VENV)/bin/starling demo

bench: $(STAMP)
	$(PY) bench/codec.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache starling.db
