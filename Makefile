# Quick start: `make demo` and `make test` do the whole set-up into .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CMAKE_BUILD := build/cmake
SOURCES := setup.py pyproject.toml requirements-dev.txt \
	$(wildcard csrc/*.cpp csrc/*.h csrc/kernels/*.cpp csrc/kernels/*.h csrc/cuda/*.cpp csrc/kernels/*.cu csrc/kernels/*.cuh)

.PHONY: demo test lint cpp-test nvcc-check bench bench-report clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check .

# The CPU kernel tests; the CUDA kernels are compiled by nvcc-check (part of the pytest suite).
cpp-test:
	cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=Release -DDROPCLASS_FAST_CUDA=OFF
	cmake --build $(CMAKE_BUILD) -j 2
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# nvcc -c of every CUDA kernel for sm_80 and sm_90, warnings as errors (skipped without nvcc).
nvcc-check: $(STAMP)
	$(PY) -m pytest tests/test_cuda_build.py -q

test: $(STAMP) lint cpp-test
	$(PY) -m pytest tests -q

bench: $(STAMP)
	$(PY) -m pytest --benchmark-only benchmarks/

# Runs the suite and rewrites benchmarks/RESULTS.md, its plots and results.json (about 4 minutes on a 2-core CPU).
bench-report: $(STAMP)
	$(PY) benchmarks/report.py

clean:
	rm -rf build $(VENV) dropclass_fast/_C*.so *.egg-info
