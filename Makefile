# Quick start: `make demo` and `make test` do the whole set-up into .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CMAKE_BUILD := build/cmake
SOURCES := setup.py pyproject.toml requirements-dev.txt \
	$(wildcard csrc/*.cpp csrc/*.h csrc/kernels/*.cpp csrc/kernels/*.h csrc/cuda/*.cpp csrc/kernels/*.cu csrc/kernels/*.cuh)

.PHONY: demo test lint cpp-test nvcc-check bench bench-report gpu-build gpu-test gpu-bench gpu-session gpu-session-report \
	gpu-software-check clean

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

# Runs the suite and rewrites benchmarks/RESULTS.md, its plots and results.json (about 4 minutes on a 2-core CPU);
# the GPU runs kept in benchmarks/gpu/ (gpu-session-report) stay in the report.
bench-report: $(STAMP)
	$(PY) benchmarks/report.py
	if ls benchmarks/gpu/*.json >/dev/null 2>&1; then $(RENDER_RESULTS); fi

# On a CUDA machine whose $(GPU_PYTHON) already holds a CUDA build of torch and triton, pytest,
# pytest-benchmark, numpy, pillow, matplotlib, tqdm and ninja (nothing is downloaded):
# build the CUDA kernels in place, run the GPU tests (pytest marker gpu: CUDA and Triton kernels at full
# size, compute-sanitizer), and benchmark at the paper's shapes. gpu-bench merges its run with the CPU
# run in benchmarks/results.json into benchmarks/RESULTS.md and records the faster of the Triton and
# CUDA kernels per op in dropclass_fast/backend_table.json. BENCH_ARGS passes pytest arguments to the
# suite, e.g. BENCH_ARGS='-k voc' to run part of it; the table is then left as it is (update it with
# benchmarks/backend_table.py --json $(GPU_OUT)/results.json from a run with the cityscapes rows).
GPU_PYTHON ?= python3
GPU_OUT ?= build/gpu-bench
gpu-build:
	$(GPU_PYTHON) -m pip install --no-deps --no-build-isolation -e .

gpu-test: gpu-build
	$(GPU_PYTHON) -m pytest -m gpu tests -q

gpu-bench: gpu-build
	DROPCLASS_BENCH_DEVICES=cuda $(GPU_PYTHON) benchmarks/report.py --output-dir $(GPU_OUT) -- $(BENCH_ARGS)
	$(GPU_PYTHON) benchmarks/report.py --json benchmarks/results.json --json $(GPU_OUT)/results.json
	$(if $(BENCH_ARGS),@echo "BENCH_ARGS given: dropclass_fast/backend_table.json not updated",$(GPU_PYTHON) benchmarks/backend_table.py --json $(GPU_OUT)/results.json)

# A lent GPU machine's whole job in one command of at most 10 minutes (benchmarks/gpu_session.py: build, the
# benchmarks the targets are judged on, the GPU tests, the other ops; each stage cut short at its time cap,
# keeping what finished) into $(GPU_SESSION): session.log, tests.xml and a pytest-benchmark JSON per stage. Back
# on the development machine, gpu-session-report keeps the JSON files in benchmarks/gpu/ (named by the UTC time
# of the merge), rewrites RESULTS.md from the CPU run and every kept GPU run, and the backend table from this
# session's Cityscapes rows.
GPU_SESSION ?= build/gpu-session
RENDER_RESULTS = $(PY) benchmarks/report.py --json benchmarks/results.json $$(ls benchmarks/gpu/*.json | sed 's/^/--json /')
gpu-session:
	$(GPU_PYTHON) benchmarks/gpu_session.py --out $(GPU_SESSION)

gpu-session-report: $(STAMP)
	test -d $(GPU_SESSION)
	mkdir -p benchmarks/gpu
	stamp=$$(date -u +%Y%m%dT%H%M); for f in $(wildcard $(GPU_SESSION)/*.json); do \
		cp "$$f" "benchmarks/gpu/$$stamp-$$(basename $$f)"; done
	$(RENDER_RESULTS)
	$(PY) benchmarks/backend_table.py $(addprefix --json ,$(wildcard $(GPU_SESSION)/targets.json $(GPU_SESSION)/ops.json))

# The GPU machine's software, without its GPU: a venv holding torch 2.11.0+cu130 (about 3 GB downloaded
# once), the CUDA extension built against it by the local nvcc (CUDA 13; CUDA_HOME, default /usr/local/cuda)
# in a clone of HEAD, and the whole suite run there on the CPU. Not part of `make test`.
GPU_SW_VENV := $(abspath build/venv-torch211)
GPU_SW_TREE := build/torch211-clone
gpu-software-check:
	test -x $(GPU_SW_VENV)/bin/python || $(PYTHON) -m venv $(GPU_SW_VENV)
	grep -v '^torch==' requirements-dev.txt > build/requirements-torch211.txt
	$(GPU_SW_VENV)/bin/pip install torch==2.11.0 -r build/requirements-torch211.txt
	rm -rf $(GPU_SW_TREE) && git clone -q . $(GPU_SW_TREE)
	cd $(GPU_SW_TREE) && CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} $(GPU_SW_VENV)/bin/pip install --no-deps --no-build-isolation -e .
	cd $(GPU_SW_TREE) && DROPCLASS_REFERENCE_DIR=$(CURDIR)/../shared/reference $(GPU_SW_VENV)/bin/python -m pytest tests -q

clean:
	rm -rf build $(VENV) dropclass_fast/_C*.so *.egg-info
