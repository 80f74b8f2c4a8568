"""The performance targets of the benchmark issue and the core, Triton and CUDA issues, judged on measured rows.

Each :class:`Target` says what was measured and whether the target is ``met``, ``not met``,
``reported`` (a comparison the issue asks to report, with no threshold) or ``not measured`` (no
such rows in the runs: never estimated).
"""

from __future__ import annotations

from dataclasses import dataclass

from results import Results, Row, formatted, on_device, ratio

MET, NOT_MET, REPORTED, NOT_MEASURED = "met", "not met", "reported", "not measured"
STEP_VARIANTS = ("baseline", "official", "dropclass_fast")


@dataclass
class Target:
    """One line of the targets table."""

    name: str
    measured: str
    status: str


def _status(ok: bool) -> str:
    return MET if ok else NOT_MET


def _ms(row: Row) -> str:
    return f"{1e3 * row['median_s']:.4g} ms"


def cpu_op_shape(results: Results) -> str | None:
    """The op shape of the CPU rows: ``"cpu"`` when measured, else the first CPU shape (a smoke run's)."""
    shapes = [shape for device, shape in results.configs("op", ("device", "shape")) if device == "cpu"]
    return "cpu" if "cpu" in shapes else (shapes[0] if shapes else None)


def _core_targets(results: Results) -> list[Target]:
    speed = "fused `seg_cross_entropy` fwd+bwd at least 4x faster than eager (CPU, float32)"
    memory = "fused `seg_cross_entropy` peak extra memory at most 1/8 of eager's (CPU, float32)"
    shape = cpu_op_shape(results)
    where = {"op": "seg_cross_entropy", "mode": "fwd+bwd", "dtype": "float32", "device": "cpu", "shape": shape}
    cpp, eager = results.one("op", impl="cpp", **where), results.one("op", impl="eager", **where)
    if cpp is None or eager is None:
        return [Target(speed, "no cpp/eager rows", NOT_MEASURED), Target(memory, "no cpp/eager rows", NOT_MEASURED)]
    suite_speedup = eager["median_s"] / cpp["median_s"]
    measured = f"{cpp['shape_label']}: suite {suite_speedup:.2f}x ({_ms(cpp)} vs {_ms(eager)})"
    interleaved = results.one("interleaved", dtype="float32", shape=shape)
    if interleaved is not None:
        judged = interleaved["speedup_median"]
        measured += (
            f"; interleaved {judged:.2f}x (median of {interleaved['rounds']} rounds, "
            f"{interleaved['speedup_min']:.2f}-{interleaved['speedup_max']:.2f}), judged on it"
        )
    else:
        judged = suite_speedup
    targets = [Target(speed, measured, _status(judged >= 4.0))]
    fused_mib, eager_mib = cpp.get("peak_extra_mib"), eager.get("peak_extra_mib")
    if fused_mib is None or not eager_mib:
        targets.append(Target(memory, "peak memory not measured", NOT_MEASURED))
    else:
        ratio = fused_mib / eager_mib
        text = f"{fused_mib:.1f} vs {eager_mib:.1f} MiB = {ratio:.3f}"
        targets.append(Target(memory, text, _status(ratio <= 1 / 8)))
    return targets


def _judged(name: str, measured: str, ok: bool | None, missing: str) -> Target:
    """``met`` / ``not met`` by ``ok``; ``not measured`` (``missing`` saying what is absent) where ``ok`` is None."""
    return Target(name, missing, NOT_MEASURED) if ok is None else Target(name, measured, _status(ok))


def _mib(row: Row) -> str:
    return formatted(row.get("peak_extra_mib"), ".1f")


def _gpu_kernel_targets(results: Results, backend: str) -> list[Target]:
    """The four kernel targets of ``backend`` for each dtype: a line per target and dtype, ``not measured`` (with
    what is missing) where a row it needs is absent; eager, compile and copy rows from the fused row's GPU."""
    prefix = f"{backend}: `dropclass_loss` fwd+bwd, Cityscapes shape (B=12, K=19, 128x256 -> 512x1024)"
    names = {
        "eager": f"{prefix}, at least 10x eager",
        "compile": f"{prefix}, at least 3x torch.compile of eager",
        "floor": f"{prefix}, within 2x of the bandwidth floor (bytes it must move / measured copy bandwidth)",
        "memory": f"{prefix}, peak extra memory at most 1/10 of eager's",
    }
    if not results.select("op", device="cuda"):
        return [Target(name, "no CUDA rows in these runs", NOT_MEASURED) for name in names.values()]
    where = {"op": "dropclass_loss", "mode": "fwd+bwd", "device": "cuda", "shape": "cityscapes"}
    targets = []
    for dtype in ("bfloat16", "float32"):
        named = {key: f"{name} ({dtype})" for key, name in names.items()}
        fused = results.one("op", impl=backend, dtype=dtype, **where)
        if fused is None:
            targets += [Target(name, f"no {backend} {dtype} row", NOT_MEASURED) for name in named.values()]
            continue
        gpu = fused["gpu"]
        eager = results.one("op", impl="eager", dtype=dtype, gpu=gpu, **where)
        compiled = results.one("op", impl="compile", dtype=dtype, gpu=gpu, **where)
        copy_bandwidth = results.copy_bandwidth("cuda", gpu)
        speedup = ratio(eager and eager["median_s"], fused["median_s"])
        ok = None if speedup is None else speedup >= 10
        targets.append(_judged(named["eager"], f"{formatted(speedup, '.2f')}x", ok, f"no eager row on {gpu}"))
        speedup = ratio(compiled and compiled["median_s"], fused["median_s"])
        ok = None if speedup is None else speedup >= 3
        targets.append(_judged(named["compile"], f"{formatted(speedup, '.2f')}x", ok, f"no compile row on {gpu}"))
        floor_s = None if copy_bandwidth is None else fused["bytes_moved"] / copy_bandwidth
        to_floor = ratio(fused["median_s"], floor_s)
        text = f"{_ms(fused)} vs floor {1e3 * (floor_s or 0):.4g} ms = {formatted(to_floor, '.2f')}x"
        ok = None if to_floor is None else to_floor <= 2
        targets.append(_judged(named["floor"], text, ok, f"no copy-bandwidth row on {gpu}"))
        memory = ratio(fused.get("peak_extra_mib"), eager and eager.get("peak_extra_mib"))
        text = f"{_mib(fused)} vs {_mib(eager or {})} MiB = {formatted(memory, '.3f')}"
        ok = None if memory is None else memory <= 0.1
        targets.append(_judged(named["memory"], text, ok, f"no eager peak memory with the {backend} one on {gpu}"))
    return targets


def _step_rows(results: Results, device: str, shape: str, precision: str, gpu: str | None = None) -> dict[str, Row]:
    """The latest row of each variant at (device, shape, precision); on ``"cuda"``, measured on ``gpu``."""
    where = {"shape": shape, "precision": precision, **on_device(device, gpu)}
    rows = {}
    for variant in STEP_VARIANTS:
        row = results.one("train_step", variant=variant, **where)
        if row is not None:
            rows[variant] = row
    return rows


def interleaved_step_text(row: Row) -> str:
    """``"interleaved: official 1.148x (1.08-1.22), dropclass_fast 1.084x (1.01-1.16) the baseline's time, N
    rounds"`` from an ``interleaved_step`` row: the median (range) of the per-round ratios to the baseline."""
    parts = [
        f"{variant} {row[f'{variant}_ratio_median']:.3f}x ({row[f'{variant}_ratio_min']:.2f}-"
        f"{row[f'{variant}_ratio_max']:.2f})"
        for variant in STEP_VARIANTS
        if variant != "baseline" and f"{variant}_ratio_median" in row
    ]
    return f"interleaved: {', '.join(parts)} the baseline's time, median of {row['rounds']} rounds"


def _gpu_step_targets(results: Results) -> list[Target]:
    time_name = "GPU step (bf16 autocast, Cityscapes shape): dropclass_fast at most 1.10x the baseline step time"
    memory_name = "GPU step (bf16 autocast, Cityscapes shape): dropclass_fast peak memory at most the baseline's"
    official_name = "GPU step (bf16 autocast, Cityscapes shape): official-style eager DropClass beside it"
    where = {"device": "cuda", "shape": "cityscapes", "precision": "bf16-autocast"}
    fast = results.one("train_step", variant="dropclass_fast", **where)
    rows = {} if fast is None else _step_rows(results, **where, gpu=fast["gpu"])
    if "baseline" not in rows:
        reason = "no CUDA bf16-autocast training-step rows of dropclass_fast and the baseline on one GPU"
        return [Target(name, reason, NOT_MEASURED) for name in (time_name, memory_name, official_name)]
    base = rows["baseline"]
    time_ratio = fast["median_s"] / base["median_s"]
    time_text = f"{_ms(fast)} vs {_ms(base)} = {time_ratio:.3f}x"
    interleaved = results.one("interleaved_step", gpu=fast["gpu"], **where)
    if interleaved is not None:
        time_ratio = interleaved["dropclass_fast_ratio_median"]
        time_text += f"; {interleaved_step_text(interleaved)}, judged on it"
    memory_ratio = ratio(fast.get("peak_extra_mib"), base.get("peak_extra_mib"))
    memory_text = f"{_mib(fast)} vs {_mib(base)} MiB = {formatted(memory_ratio, '.3f')}"
    ok = None if memory_ratio is None else memory_ratio <= 1.0
    targets = [
        Target(time_name, time_text, _status(time_ratio <= 1.10)),
        _judged(memory_name, memory_text, ok, "peak memory not measured"),
    ]
    official = rows.get("official")
    if official is None:
        targets.append(Target(official_name, "no official-style row", NOT_MEASURED))
    else:
        memory_ratio = ratio(official.get("peak_extra_mib"), base.get("peak_extra_mib"))
        text = (
            f"{_ms(official)} = {official['median_s'] / base['median_s']:.3f}x baseline, "
            f"{_mib(official)} MiB = {formatted(memory_ratio, '.3f')}"
        )
        targets.append(Target(official_name, text, REPORTED))
    return targets


def _cpu_step_target(results: Results) -> Target:
    name = "CPU step (small shape, float32): baseline, official-style DropClass, dropclass_fast"
    configs = [c for c in results.configs("train_step", ("device", "shape", "precision")) if c[0] == "cpu"]
    for device, shape, precision in configs:
        rows = _step_rows(results, device, shape, precision)
        if len(rows) == len(STEP_VARIANTS):
            base = rows["baseline"]
            parts = [
                f"{variant} {_ms(row)} ({row['median_s'] / base['median_s']:.2f}x), "
                f"{_mib(row)} MiB ({formatted(ratio(row.get('peak_extra_mib'), base.get('peak_extra_mib')), '.2f')})"
                for variant, row in rows.items()
            ]
            interleaved = results.one("interleaved_step", device=device, shape=shape, precision=precision)
            if interleaved is not None:
                parts.append(interleaved_step_text(interleaved))
            return Target(name, f"{base['shape_label']}: " + "; ".join(parts), REPORTED)
    return Target(name, "no CPU training-step rows", NOT_MEASURED)


def evaluate(results: Results) -> list[Target]:
    """Every target, in the order of the issue: GPU step, CPU step, core kernels, Triton, CUDA."""
    return [
        *_gpu_step_targets(results),
        _cpu_step_target(results),
        *_core_targets(results),
        *_gpu_kernel_targets(results, "triton"),
        *_gpu_kernel_targets(results, "cuda"),
    ]
