from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; it must be chosen before
    # dropclass_fast.triton (which defines the kernels) is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dropclass_fast
from dropclass_fast import _extension

# ../shared/reference beside the repository; DROPCLASS_REFERENCE_DIR points a clone elsewhere at it.
REFERENCE_DIR = Path(
    os.environ.get("DROPCLASS_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference")
)


@pytest.fixture(autouse=True)
def _seed_and_backend():
    torch.manual_seed(0)
    with dropclass_fast.set_backend("auto"):
        yield


@pytest.fixture(scope="session")
def cpp_backend():
    """The C++ backend must be built for the suite (``make test`` builds it)."""
    assert _extension.load(), f"C++ extension unavailable: {_extension.error()}"
    return "cpp"


@pytest.fixture(scope="session")
def reference_vectors():
    """Loads a file of ``../shared/reference``; skips the test when it is absent."""

    def load(name: str) -> dict:
        path = REFERENCE_DIR / name
        if not path.is_file():
            pytest.skip(f"reference vectors not found at {path}")
        return torch.load(path, weights_only=True)

    return load
