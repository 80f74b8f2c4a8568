"""The command line of the training examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import build_parser, config_from_args
from .engine import TrainResult, train


def main(
    argv: Sequence[str] | None, datasets: tuple[str, ...], description: str, prog: str | None = None
) -> TrainResult:
    """Parses ``argv`` (``datasets[0]`` is the default ``--dataset``; ``prog`` names the command) and trains. A
    setting the configuration refuses exits as a usage error (status 2, with the usage line), not a traceback."""
    parser = build_parser(datasets, description, prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if config.data_root is not None and not Path(config.data_root).is_dir():
        parser.error(f"--data-root {config.data_root} is not a folder")
    return train(config)
