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

# typecheck: mypy over protocol/ and firmware/ against the boards' MicroPython stubs
# and CPython's typeshed, and over base_station/, sim/ and bench/ (also part of `test`)
typecheck: $(STAMP)
	$(PY) -m pytest -q tests/test_build_checks.py -k typecheck

soak: $(STAMP)
	$(PY) -m pytest -q -m soak

demo: $(STAMP)
	$(VENV)/bin/starling demo

# bench: the `bench` extra (eclipse-zenoh), MicroPython's webassembly port for the 32-bit
# RAM figure when npm is there (into build/wasm, optional), then every benchmark.
WASM_MP := @micropython/micropython-webassembly-pyscript@1.29.0-6
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-save --prefix build/wasm $(WASM_MP) \
	    || echo "bench: $(WASM_MP) not installed: the 32-bit RAM figure is skipped"; \
	else echo "bench: no npm: the 32-bit RAM figure is skipped"; fi
	$(PY) bench/codec.py
	$(PY) bench/ingest.py
	$(PY) bench/node.py
	@if [ -f bench/chain.py ]; then $(PY) bench/chain.py; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache starling.db
