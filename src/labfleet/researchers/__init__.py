"""Built-in researchers, by name.

``make_researcher(name, seed=..., **options)`` is how the session gets one: greedy,
random, grid, optuna (TPE), cmaes (Optuna's CMA-ES), waves (factorial knob waves),
llm (a model's patches, or named ideas run as factorial waves with ``ideas=k``),
hybrid (ideas from the model, knobs re-tuned by Optuna after each structural keep)
and external (an outside agent submits). Optuna is
imported only when its researcher is made (its module imports it lazily), and so
are the LLM SDKs (``anthropic``, ``openai``: when the LLM researcher makes its
client), so the registry itself is cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labfleet.errors import ConfigError
from labfleet.researchers.base import Researcher
from labfleet.researchers.external import ExternalResearcher
from labfleet.researchers.greedy import GreedyResearcher
from labfleet.researchers.grid import GridResearcher
from labfleet.researchers.hybrid import HybridResearcher
from labfleet.researchers.llm import LLMResearcher
from labfleet.researchers.optuna import CmaEsResearcher, OptunaResearcher
from labfleet.researchers.random import RandomResearcher
from labfleet.researchers.view import Sources
from labfleet.researchers.waves import WavesResearcher

if TYPE_CHECKING:
    from labfleet.target import Target

__all__ = [
    "RESEARCHERS",
    "CmaEsResearcher",
    "ExternalResearcher",
    "GreedyResearcher",
    "GridResearcher",
    "HybridResearcher",
    "LLMResearcher",
    "OptunaResearcher",
    "RandomResearcher",
    "Researcher",
    "WavesResearcher",
    "make_researcher",
]

RESEARCHERS: dict[str, type[Researcher]] = {
    cls.name: cls
    for cls in (
        CmaEsResearcher, ExternalResearcher, GreedyResearcher, GridResearcher, HybridResearcher, LLMResearcher,
        OptunaResearcher, RandomResearcher, WavesResearcher,
    )
}


def make_researcher(name: str, seed: int = 0, target: Target | None = None, **options: Any) -> Researcher:
    """A researcher by name; ``ConfigError`` (one line) for an unknown name or option.

    Researchers that read the target's files (``wants_sources``) get a read-only view of
    ``target`` (``view.Sources``), never the target itself.
    """
    cls = RESEARCHERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown researcher {name!r} (available: {', '.join(sorted(RESEARCHERS))})")
    if cls.wants_sources:
        options["sources"] = Sources.of(target) if target is not None else None
    try:
        return cls(seed=seed, **options)  # type: ignore[call-arg]
    except TypeError as exc:  # an option the researcher does not take
        raise ConfigError(f"researcher {name!r}: {exc}") from None
