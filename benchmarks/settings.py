"""What a benchmark run covers, from the environment (read once, at import).

* ``DROPCLASS_BENCH_SMOKE=1``: every case once (one round, no warm-up) at the ``smoke`` shapes, and
  ``torch.compile`` with the ``eager`` compiler backend (Dynamo traces, no Inductor code generation):
  a quick check that every benchmark still runs, not a measurement.
* ``DROPCLASS_BENCH_DEVICES``: comma-separated devices to run (default ``cpu,cuda``; ``cuda`` cases
  are skipped where there is no CUDA device).
* ``DROPCLASS_BENCH_THREADS``: CPU threads (default 2, the CPU of the reference runs).
* ``DROPCLASS_BENCH_SECONDS``: time spent timing one case, about (default 3): 5 to 60 rounds.
* ``DROPCLASS_BENCH_COMPILE_BACKEND``: the ``torch.compile`` backend of the ``compile`` rows
  (default ``inductor``; ``eager`` in a smoke run).
"""

from __future__ import annotations

import os

SMOKE = os.environ.get("DROPCLASS_BENCH_SMOKE") == "1"
DEVICES = tuple(d.strip() for d in os.environ.get("DROPCLASS_BENCH_DEVICES", "cpu,cuda").split(",") if d.strip())
THREADS = int(os.environ.get("DROPCLASS_BENCH_THREADS", "2"))
SECONDS_PER_CASE = float(os.environ.get("DROPCLASS_BENCH_SECONDS", "3"))
COMPILE_BACKEND = os.environ.get("DROPCLASS_BENCH_COMPILE_BACKEND", "eager" if SMOKE else "inductor")
MIN_ROUNDS, MAX_ROUNDS, WARMUP_ROUNDS = 5, 60, 2

#: (device, shape name) pairs of the op benchmarks: CPU-sized shapes on CPU, the paper's on CUDA.
OP_SHAPES = (
    (("cpu", "smoke"), ("cuda", "smoke")) if SMOKE else (("cpu", "cpu"), ("cuda", "cityscapes"), ("cuda", "voc"))
)

#: (device, shape name, precision) of the training-step benchmarks.
STEP_CONFIGS = (
    (("cpu", "smoke", "float32"), ("cuda", "smoke", "bf16-autocast"))
    if SMOKE
    else (("cpu", "cpu", "float32"), ("cuda", "cityscapes", "float32"), ("cuda", "cityscapes", "bf16-autocast"))
)
