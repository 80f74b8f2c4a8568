"""`make demo` keeps working: examples/demo.py --quick end to end (baseline and DropClass)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_quick_run(tmp_path, cpp_backend):
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--quick", "--output", str(tmp_path), "--no-progress-bar"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| class | baseline | DropClass | delta |") :].splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:] if line.startswith("|")}
    for name in ("sky", "road", "bicycle", "rider", "mIoU"):
        assert name in rows, proc.stdout
    for name in ("iou.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # DropClass ran twice the baseline's iterations
    assert len((tmp_path / "baseline" / "log.csv").read_text().splitlines()) == 1 + 3
    assert len((tmp_path / "dropclass" / "log.csv").read_text().splitlines()) == 1 + 6
