"""The command line of the training examples."""

from __future__ import annotations

from collections.abc import Sequence

from .config import build_parser, config_from_args
from .engine import TrainResult, train


def main(
    argv: Sequence[str] | None, datasets: tuple[str, ...], description: str, prog: str | None = None
) -> TrainResult:
    """Parses ``argv`` (``datasets[0]`` is the default ``--dataset``; ``prog`` names the command) and trains."""
    args = build_parser(datasets, description, prog).parse_args(argv)
    return train(config_from_args(args))
