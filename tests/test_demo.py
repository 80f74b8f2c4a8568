"""`make demo` keeps working: a few iterations of examples/demo.py end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_quick_run(cpp_backend):
    proc = subprocess.run([sys.executable, str(DEMO), "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^mIoU\s", out, flags=re.MULTILINE), out
    for name in ("sky", "road", "rider"):
        assert re.search(rf"^{name}\s", out, flags=re.MULTILINE), out
    difference = float(re.search(r"\|loss difference\| ([0-9.eE+-]+)", out).group(1))
    assert difference < 1e-4
