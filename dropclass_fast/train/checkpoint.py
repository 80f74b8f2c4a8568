"""Atomic checkpoint files and the random-number-generator state they carry."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a resumed run) sees either the previous complete file or the
    new complete file, never a partial one, even if the process is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint written by the training engine (to CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ValueError(f"{path} is not a training checkpoint of dropclass_fast (no 'model'/'iteration' entries)")
    return state


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's, torch's CPU and (if used) CUDA generators, in types that
    ``torch.load(weights_only=True)`` reads (NumPy's state as a dict of a tensor and Python scalars)."""
    name, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured (also the NumPy state tuple that earlier versions saved)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"], numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
            numpy_state["has_gauss"], numpy_state["cached_gaussian"],
        )  # fmt: skip
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # per saved device that is visible now (perhaps fewer)
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
