"""Benchmark cases of the DropClass ops: inputs, one timed call, and the bytes the call must move.

A *case* is a small JSON-able dict, for example::

    {"op": "seg_cross_entropy", "impl": "cpp", "mode": "fwd+bwd", "dtype": "float32", "device": "cpu",
     "B": 2, "K": 19, "h": 128, "w": 256, "H": 512, "W": 1024, "threads": 2}

* ``op``: one of :data:`OPS`, or ``"train_step"`` (see ``train_step.py``);
* ``impl``: a backend name (``"eager"``, ``"cpp"``, ``"triton"``, ``"cuda"``: ``dcf.<op>`` run under
  ``dropclass_fast.set_backend(impl)``; ``"eager"`` is the baseline of every ratio) or ``"compile"``
  (``torch.compile`` of ``dropclass_fast.reference.<op>``, Inductor unless ``compile_backend`` says
  otherwise);
* ``mode``: ``"fwd"`` (under ``torch.no_grad``) or ``"fwd+bwd"`` (default; gradients of every floating input);
* ``dtype`` of the floating inputs (default float32), ``device`` (default ``"cpu"``);
* sizes ``B, K`` and, per op, ``C`` (feature channels), ``h, w`` (logits), ``H, W`` (labels);
* ``keep`` (``seg_cross_entropy`` only): drop class 3 as well; the other ops always drop class 3.

:func:`build` makes the inputs once and returns a :class:`Runner`; :func:`bytes_moved` is the
least traffic a call must make (every input read once, every output written once), the numerator
of the achieved bandwidth.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import settings
import torch

import dropclass_fast
from dropclass_fast import _extension, reference
from dropclass_fast import functional as dcf
from dropclass_fast._checks import check_choice

Case = dict[str, Any]

OPS = dropclass_fast._backend.OPS
MODES = ("fwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16")
BACKEND_IMPLS = tuple(name for name in dropclass_fast._backend.BACKENDS if name != "auto")
IMPLS = (*BACKEND_IMPLS, "compile")
GPU_BACKENDS = ("triton", "cuda")
#: What an op case gets for each of these fields it leaves out (:func:`bytes_moved` and :func:`build_op` fill them in).
OP_CASE_DEFAULTS: Case = {"mode": "fwd+bwd", "dtype": "float32", "device": "cpu", "threads": 2, "seed": 0}

#: Op shapes by name. ``cpu``: the CPU-sized Cityscapes crop; ``cityscapes`` / ``voc``: the
#: paper's per-GPU shapes (C = 270, HRNet-W18-small-v2's A); ``smoke``: one quick call per case.
SHAPES: dict[str, dict[str, int]] = {
    "smoke": {"B": 2, "K": 19, "C": 16, "h": 8, "w": 16, "H": 32, "W": 64},
    "cpu": {"B": 2, "K": 19, "C": 256, "h": 128, "w": 256, "H": 512, "W": 1024},
    "cityscapes": {"B": 12, "K": 19, "C": 270, "h": 128, "w": 256, "H": 512, "W": 1024},
    "voc": {"B": 16, "K": 20, "C": 270, "h": 120, "w": 120, "H": 480, "W": 480},
}

DROPPED_CLASS = 3
PROGRESS = 0.5
IGNORE_INDEX = 255


class Runner(NamedTuple):
    """``run()`` performs one timed call (and waits for the device); ``clear()`` frees what it left (gradients)."""

    run: Callable[[], None]
    clear: Callable[[], None]


def shape_label(case: Case) -> str:
    """A short text of the sizes that matter for ``case["op"]``, e.g. ``"B2 K19 128x256->512x1024"``."""
    op = case["op"]
    if op == "train_step":
        return f"B{case['B']} K{case['K']} images {case['H']}x{case['W']}"
    label = f"B{case['B']} K{case['K']}"
    if op == "channel_mask":
        return f"{label} C{case['C']} {case['h']}x{case['w']}"
    if op == "dropped_class_prob":
        return f"{label} {case['h']}x{case['w']}"
    return f"{label} {case['h']}x{case['w']}->{case['H']}x{case['W']}"


def bytes_moved(case: Case) -> int:
    """Least bytes one call of an op case reads and writes: inputs once, outputs (and input gradients) once.

    Labels count as int64 (8 bytes a pixel), as the cases make them; weights and scalars are left out.
    """
    case = {**OP_CASE_DEFAULTS, **case}
    op, mode = case["op"], case["mode"]
    size = torch.empty((), dtype=getattr(torch, case["dtype"])).element_size()
    batch, classes = int(case["B"]), int(case["K"])
    if op == "channel_mask":
        features = batch * int(case["C"]) * case["h"] * case["w"] * size
        return 2 * features if mode == "fwd" else 5 * features  # + read grad_out, read A again, write dA
    logits = batch * classes * case["h"] * case["w"] * size
    labels = 0 if op == "dropped_class_prob" else batch * case["H"] * case["W"] * 8
    logit_tensors = 2 if op == "dropclass_loss" else 1
    per_logits = 1 if mode == "fwd" else 2  # read, and write its gradient
    return logit_tensors * per_logits * logits + labels


def _check_case(case: Case) -> None:
    check_choice("case op", case.get("op"), OPS)
    check_choice("case impl", case.get("impl"), IMPLS)
    check_choice("case mode", case["mode"], MODES)


def _op_inputs(
    case: Case, generator: torch.Generator
) -> tuple[tuple[Any, ...], list[torch.Tensor], torch.Tensor | None]:
    """``(args, leaves, cotangent)``: the op's positional arguments (the same for ``dcf`` and ``reference``),
    the tensors that get gradients, and the output gradient (``None`` for a scalar loss)."""
    dtype = getattr(torch, case["dtype"])
    device = torch.device(case["device"])
    batch, classes = int(case["B"]), int(case["K"])

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator)).to(device, dtype).requires_grad_()

    def labels() -> torch.Tensor:
        target = torch.randint(0, classes, (batch, case["H"], case["W"]), generator=generator)
        target[:, : max(1, case["H"] // 32)] = IGNORE_INDEX  # an ignored band, as Cityscapes' ego vehicle
        return target.to(device)

    keep = torch.ones(classes, device=device)
    keep[DROPPED_CLASS] = 0.0
    op = case["op"]
    if op == "channel_mask":
        features = leaf(batch, int(case["C"]), case["h"], case["w"])
        weight = leaf(classes, int(case["C"]), scale=0.1)
        cotangent = torch.randn(features.shape, generator=generator).to(device, dtype)
        return (features, weight, keep), [features, weight], cotangent
    logits = leaf(batch, classes, case["h"], case["w"])
    if op == "dropped_class_prob":
        return (logits, keep), [logits], None
    if op == "seg_cross_entropy":
        args = (logits, labels(), keep if case.get("keep") else None, IGNORE_INDEX, bool(case.get("align_corners")))
        return args, [logits], None
    drop_logits = leaf(batch, classes, case["h"], case["w"])
    return (logits, drop_logits, labels(), keep, PROGRESS), [logits, drop_logits], None


def _synchronize(device: str) -> Callable[[], None]:
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def build_op(case: Case) -> Runner:
    """Inputs of an op case, made once (seeded by ``case["seed"]``, default 0), and a :class:`Runner` of one call."""
    case = {**OP_CASE_DEFAULTS, **case}
    _check_case(case)
    torch.set_num_threads(int(case["threads"]))
    generator = torch.Generator().manual_seed(int(case["seed"]))
    args, leaves, cotangent = _op_inputs(case, generator)
    op, impl = case["op"], case["impl"]
    if impl == "compile":
        torch._dynamo.reset()  # a fresh compile per case: no recompile limit reached across cases
        compiled = torch.compile(getattr(reference, op), dynamic=False, backend=case.get("compile_backend", "inductor"))

        def call() -> torch.Tensor:
            return compiled(*args)
    else:

        def call() -> torch.Tensor:
            with dropclass_fast.set_backend(impl):
                return getattr(dcf, op)(*args)

    def output() -> torch.Tensor:
        result = call()
        return result[0] if op == "dropclass_loss" else result  # dropclass_loss: (total, parts)

    def clear() -> None:
        for tensor in leaves:
            tensor.grad = None

    synchronize = _synchronize(case["device"])
    if case["mode"] == "fwd":

        def run() -> None:
            with torch.no_grad():
                output()
            synchronize()
    else:

        def run() -> None:
            clear()
            output().backward(cotangent)
            synchronize()

    return Runner(run, clear)


def unavailable(case: Case) -> str | None:
    """Why ``case`` cannot run in this session (the skip reason), or ``None``."""
    device, impl = case["device"], case.get("impl")
    if device not in settings.DEVICES:
        return f"device {device!r} not selected (DROPCLASS_BENCH_DEVICES={','.join(settings.DEVICES)})"
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device in this run"
    if impl == "cpp" and device != "cpu":
        return "the C++ backend runs on CPU tensors only"
    if impl in GPU_BACKENDS and device == "cpu":
        return f"{impl!r} is a GPU backend (on CPU only under TRITON_INTERPRET=1, a test mode: not timed)"
    if impl == "cpp" and not _extension.load():
        return f"C++ kernels unavailable: {_extension.error()}"
    return None


class Interleaved(NamedTuple):
    """Per runner name: seconds and minor page faults of each timed call, one call per round."""

    seconds: dict[str, list[float]]
    minor_faults: dict[str, list[int]]


def time_interleaved(benchmark: Any, runners: dict[str, Runner], rounds: int, warmup_rounds: int) -> Interleaved:
    """Times ``runners`` back to back in every round, reversing their order each round, under
    ``benchmark.pedantic`` (whose time is that of one round). Each runner runs once first (first-call costs);
    the warm-up rounds are dropped from the result. ``DROPCLASS_BENCH_SMOKE``: one round, no warm-up."""
    for runner in runners.values():
        runner.run()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    faults: dict[str, list[int]] = {name: [] for name in runners}
    order = list(runners)

    def one_round() -> None:
        for name in order:
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            runners[name].run()
            seconds[name].append(time.perf_counter() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        order.reverse()

    if settings.SMOKE:
        benchmark.pedantic(one_round, rounds=1, iterations=1)
        return Interleaved(seconds, faults)
    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    return Interleaved(
        {name: values[-rounds:] for name, values in seconds.items()},
        {name: values[-rounds:] for name, values in faults.items()},
    )


def build(case: Case) -> Runner:
    """A :class:`Runner` for an op case or, for ``op == "train_step"``, a training-step case."""
    if case["op"] == "train_step":
        import train_step  # imports dropclass_fast.models: only the training-step cases need it

        return Runner(*train_step.build_step(case))
    return build_op(case)
