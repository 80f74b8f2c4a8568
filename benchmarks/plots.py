"""PNG figures of the report: op speedups over eager per backend, training-step time and memory."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend
from results import Results  # noqa: E402

IMPL_COLORS = {"cpp": "tab:blue", "triton": "tab:orange", "cuda": "tab:green", "compile": "tab:gray"}
VARIANT_COLORS = {
    "baseline": "tab:gray",
    "baseline_fused": "silver",
    "official": "tab:red",
    "dropclass_fast": "tab:blue",
}


def speedup_figure(results: Results, path: Path) -> bool:
    """Bars of ``eager time / impl time`` per op and mode, one panel per (device, shape, dtype); False if no rows."""
    panels = results.configs("op", ("device", "shape", "dtype"))
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.4 * len(panels)), squeeze=False)
    for ax, (device, shape, dtype) in zip(axes[:, 0], panels):
        groups = results.configs("op", ("op", "mode"))
        impls = [impl for impl in IMPL_COLORS if results.select("op", device=device, shape=shape, impl=impl)]
        width = 0.8 / max(1, len(impls))
        for position, impl in enumerate(impls):
            heights = []
            for op, mode in groups:
                where = {"device": device, "shape": shape, "dtype": dtype, "op": op, "mode": mode}
                row, eager = results.one("op", impl=impl, **where), results.one("op", impl="eager", **where)
                heights.append(eager["median_s"] / row["median_s"] if row and eager else float("nan"))
            xs = [index + (position - (len(impls) - 1) / 2) * width for index in range(len(groups))]
            ax.bar(xs, heights, width, label=impl, color=IMPL_COLORS[impl])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)), [f"{op}\n{mode}" for op, mode in groups], fontsize=8)
        ax.set_ylabel("speedup over eager (x)")
        ax.set_title(f"{device}, shape {shape}, {dtype}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def train_step_figure(results: Results, path: Path) -> bool:
    """Step time and peak extra memory per variant, one row of panels per (device, shape, precision)."""
    configs = results.configs("train_step", ("device", "shape", "precision"))
    if not configs:
        return False
    fig, axes = plt.subplots(len(configs), 2, figsize=(11, 3.4 * len(configs)), squeeze=False)
    for (time_ax, memory_ax), (device, shape, precision) in zip(axes, configs):
        rows = results.latest_per("train_step", "variant", device=device, shape=shape, precision=precision)
        variants = [row["variant"] for row in rows]
        colors = [VARIANT_COLORS.get(variant, "tab:purple") for variant in variants]
        time_ax.bar(variants, [1e3 * row["median_s"] for row in rows], color=colors)
        time_ax.set_ylabel("time per step (ms)")
        memory_ax.bar(variants, [row.get("peak_extra_mib") or 0.0 for row in rows], color=colors)
        memory_ax.set_ylabel("peak extra memory (MiB)")
        for ax in (time_ax, memory_ax):
            ax.set_title(f"{device}, {shape}, {precision}", fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
