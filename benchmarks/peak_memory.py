"""Benchmark cases, and their peak extra memory measured in a child process.

A *case* is a small JSON-able dict, for example::

    {"op": "seg_cross_entropy", "impl": "cpp", "dtype": "float32",
     "B": 2, "K": 19, "h": 128, "w": 256, "H": 512, "W": 1024, "threads": 2}

``build(case)`` makes the inputs and returns a closure that runs the op forward
and backward once; the benches time that closure in-process.
``measure(case)`` runs the same closure in a fresh interpreter
(``sys.executable``) and returns the peak resident memory above the baseline
taken after the inputs were made (and after one warm-up run, so that loading
the C++ kernels, compiling, or creating thread pools is not counted):

1. make the inputs, run the op once, drop its outputs;
2. baseline = ``VmRSS``; reset the peak by writing ``5`` to
   ``/proc/self/clear_refs`` (so ``VmHWM`` restarts at the current RSS);
3. run the op once more; peak = ``VmHWM``; ``peak_extra = peak - baseline``.

If ``clear_refs`` cannot be written, the peak falls back to
``getrusage(RUSAGE_SELF).ru_maxrss``, which cannot be reset: the child then
skips the warm-up (the number includes one-time costs) and says so in
``method``. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc
serves every large block with ``mmap`` and gives it back on free: otherwise a
freed block could stay resident after the warm-up and be reused unseen.

Run by hand::

    python benchmarks/peak_memory.py '{"op": "seg_cross_entropy", "impl": "eager", ...}'
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

Case = dict[str, Any]

# Implementations a case can name: "cpp" / "eager" run dcf.* under that backend,
# "reference" calls dropclass_fast.reference.* directly (no input checks),
# "compile" runs torch.compile(reference.*).
IMPLS = ("cpp", "eager", "reference", "compile")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def build(case: Case) -> Callable[[], None]:
    """Inputs for ``case`` and a closure running its op forward + backward once."""
    import torch

    import dropclass_fast
    from dropclass_fast import functional as dcf
    from dropclass_fast import reference

    torch.set_num_threads(int(case.get("threads", 2)))
    g = torch.Generator().manual_seed(int(case.get("seed", 0)))
    dtype = getattr(torch, case.get("dtype", "float32"))
    op, impl = case["op"], case["impl"]
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    B, K = int(case.get("B", 2)), int(case.get("K", 19))  # noqa: N806 - the paper's names

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).to(dtype).requires_grad_()

    def labels(H: int, W: int) -> torch.Tensor:  # noqa: N803
        t = torch.randint(0, K, (B, H, W), generator=g)
        t[:, : max(1, H // 32)] = 255  # an ignored band, as Cityscapes' ego vehicle
        return t

    def keep_mask(dropped: int | None = 3) -> torch.Tensor:
        keep = torch.ones(K)
        if dropped is not None:
            keep[dropped] = 0.0
        return keep

    if op == "seg_cross_entropy":
        logits = leaf(B, K, case["h"], case["w"])
        target = labels(case["H"], case["W"])
        keep = keep_mask() if case.get("keep") else None
        ac = bool(case.get("align_corners", False))

        def fwd() -> torch.Tensor:
            return dcf.seg_cross_entropy(logits, target, keep, 255, ac)

        def ref() -> torch.Tensor:
            return reference.seg_cross_entropy(logits, target, keep, 255, ac)

        inputs = [logits]
        compiled_args = (logits, target, keep, 255, ac)
        ref_fn: Callable[..., torch.Tensor] = reference.seg_cross_entropy
    elif op == "dropped_class_prob":
        logits = leaf(B, K, case["h"], case["w"])
        keep = keep_mask()

        def fwd() -> torch.Tensor:
            return dcf.dropped_class_prob(logits, keep)

        def ref() -> torch.Tensor:
            return reference.dropped_class_prob(logits, keep)

        inputs = [logits]
        compiled_args = (logits, keep)
        ref_fn = reference.dropped_class_prob
    elif op == "channel_mask":
        C = int(case["C"])  # noqa: N806
        features = leaf(B, C, case["h"], case["w"])
        weight = leaf(K, C, scale=0.1)
        keep = keep_mask()
        # a fixed cotangent, made up front: backward of (out * grad_out).sum()
        grad_out = torch.randn(B, C, case["h"], case["w"], generator=g).to(dtype)

        def fwd() -> torch.Tensor:
            return (dcf.channel_mask(features, weight, keep) * grad_out).sum()

        def ref() -> torch.Tensor:
            return (reference.channel_mask(features, weight, keep) * grad_out).sum()

        inputs = [features, weight]
        compiled_args = (features, weight, keep)
        ref_fn = reference.channel_mask
    elif op == "dropclass_loss":
        logits = leaf(B, K, case["h"], case["w"])
        drop_logits = leaf(B, K, case["h"], case["w"])
        target = labels(case["H"], case["W"])
        keep = keep_mask()
        progress = float(case.get("progress", 0.5))

        def fwd() -> torch.Tensor:
            return dcf.dropclass_loss(logits, drop_logits, target, keep, progress)[0]

        def ref() -> torch.Tensor:
            return reference.dropclass_loss(logits, drop_logits, target, keep, progress)[0]

        inputs = [logits, drop_logits]
        compiled_args = (logits, drop_logits, target, keep, progress)
        ref_fn = reference.dropclass_loss
    elif op == "dropclass_step":
        if impl not in ("cpp", "eager"):
            raise ValueError("dropclass_step runs under a backend: impl 'cpp' or 'eager'")
        from torch import nn

        C = int(case["C"])  # noqa: N806
        torch.manual_seed(int(case.get("seed", 0)))
        dc = dropclass_fast.DropClass(nn.Conv2d(C, K, 1), seed=0).to(dtype)
        loss_fn = dropclass_fast.DropClassLoss()
        features = leaf(B, C, case["h"], case["w"])
        target = labels(case["H"], case["W"])
        keep = keep_mask()
        progress = float(case.get("progress", 0.5))
        params = [p for p in dc.parameters() if p.requires_grad]

        def fwd() -> torch.Tensor:
            out = dc(features, keep=keep)
            return loss_fn(out, target, progress=progress)[0]

        def ref() -> torch.Tensor:  # not used: the step always runs under a backend
            raise AssertionError

        inputs = [features, *params]
        compiled_args = ()
        ref_fn = ref
    else:
        raise ValueError(f"unknown op {op!r}")

    if impl in ("cpp", "eager"):

        def run_loss() -> torch.Tensor:
            with dropclass_fast.set_backend(impl):
                return fwd()
    elif impl == "reference":
        run_loss = ref
    else:
        compiled = torch.compile(ref_fn, dynamic=False)
        if op == "channel_mask":

            def run_loss() -> torch.Tensor:
                return (compiled(*compiled_args) * grad_out).sum()
        elif op == "dropclass_loss":

            def run_loss() -> torch.Tensor:
                return compiled(*compiled_args)[0]
        else:

            def run_loss() -> torch.Tensor:
                return compiled(*compiled_args)

    def run() -> None:
        for t in inputs:
            t.grad = None
        run_loss().backward()

    return run


def _child(case: Case) -> dict[str, Any]:
    run = build(case)  # the inputs are made here and stay alive
    can_reset = _reset_peak()  # probe once; the real reset is below
    if can_reset:
        run()  # warm-up: kernel loading, compilation, thread pools, lazy inits
    gc.collect()
    rss_before = _status_kib("VmRSS")
    maxrss_before = _maxrss_kib()
    if can_reset:
        _reset_peak()
    run()
    hwm = _status_kib("VmHWM")
    maxrss_after = _maxrss_kib()
    if can_reset:
        peak_extra_kib = hwm - rss_before
        method = "VmHWM after clear_refs reset, minus VmRSS before the op (warm-up run first)"
    else:
        peak_extra_kib = max(maxrss_after, hwm) - rss_before
        method = "ru_maxrss minus VmRSS before the op (no peak reset possible; no warm-up)"
    return {
        "peak_extra_mib": peak_extra_kib / 1024.0,
        "baseline_rss_mib": rss_before / 1024.0,
        "ru_maxrss_delta_mib": (maxrss_after - maxrss_before) / 1024.0,
        "method": method,
    }


def measure(case: Case, timeout: float = 600.0) -> dict[str, Any]:
    """Run ``case`` in a child interpreter; its peak extra memory and how it was measured.

    Raises ``RuntimeError`` with the child's stderr when the child fails.
    """
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(case)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory child failed for {case}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(_child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
