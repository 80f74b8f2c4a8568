"""The backends that tests of CPU tensors run on: ``triton`` (through its interpreter) only where it can run them.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` on machines without a GPU; with a GPU, or without Triton
installed (``pip install .[test]``), the ``triton`` cases skip with the reason.
"""

from __future__ import annotations

import pytest

from dropclass_fast import _backend

_TRITON_ON_CPU = _backend._triton_unavailable("cpu")
#: Skips a test of Triton on CPU tensors where Triton cannot run them, with the reason.
NEEDS_TRITON_ON_CPU = pytest.mark.skipif(_TRITON_ON_CPU is not None, reason=str(_TRITON_ON_CPU))

CPU_BACKENDS = ["cpp", "eager", pytest.param("triton", marks=NEEDS_TRITON_ON_CPU)]
#: The backends with kernels of their own (``eager`` runs the reference itself).
KERNEL_BACKENDS = [backend for backend in CPU_BACKENDS if backend != "eager"]
