"""The per-iteration CSV log of a training run."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("iteration", "epoch", "progress", "lr", "loss", "ce", "ce_drop", "sup", "images_per_s", "seconds")


class CsvLog:
    """Appends one row per logged iteration to ``path`` (columns :data:`COLUMNS`).

    ``resume_from``: the iteration a resumed run restarts at; rows past it (a
    killed run's iterations after its last checkpoint) are dropped first, so
    the file never holds an iteration twice. A non-empty file there whose
    header is not :data:`COLUMNS` is a ``ValueError`` and is left as it is.
    """

    def __init__(self, path: str | Path, resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if resume_from is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames not in (None, list(COLUMNS)):
                    raise ValueError(f"cannot resume the log {self.path}: its columns are {reader.fieldnames}, "
                                     f"not the log columns {list(COLUMNS)}")
                kept = [row for row in reader if int(row["iteration"]) <= resume_from]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, row: dict[str, float | int | str]) -> None:
        """Appends ``row`` (missing columns stay empty); ``ValueError`` for a key that is not one of
        :data:`COLUMNS`, which would otherwise be dropped without a trace."""
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"row has keys {unknown} that are not log columns {list(COLUMNS)}")
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})
