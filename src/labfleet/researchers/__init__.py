"""Built-in researchers, by name. Optuna is imported only when its researcher is made."""

from __future__ import annotations

from typing import Any

from labfleet.errors import ConfigError
from labfleet.researchers.base import Researcher

NAMES = ("greedy", "grid", "optuna", "random")


def make_researcher(name: str, seed: int = 0, **options: Any) -> Researcher:
    """A researcher by name; ``ConfigError`` (one line) for an unknown one."""
    if name == "greedy":
        from labfleet.researchers.greedy import GreedyResearcher

        return GreedyResearcher(seed=seed, **options)
    if name == "random":
        from labfleet.researchers.random import RandomResearcher

        return RandomResearcher(seed=seed, **options)
    if name == "grid":
        from labfleet.researchers.grid import GridResearcher

        return GridResearcher(**options)
    if name == "optuna":
        from labfleet.researchers.optuna import OptunaResearcher

        return OptunaResearcher(seed=seed, **options)
    raise ConfigError(f"unknown researcher {name!r} (available: {', '.join(NAMES)})")
