"""A session's settings, split by concern: limits, keep rule, fleet, researcher.

``SessionConfig`` holds one frozen section per concern plus what every stage
shares (the seed, the training budget)::

    SessionConfig
      limits:     scheduler.Limits    when proposing stops (experiments, hours, until, patience, dollars, serve)
      keep_rule:  KeepRule            what a keep must beat (noise or margin, z, repeats, tiers' backfill)
      fleet:      FleetSettings       where runs go (executor, workers, threads, device, price, ...)
      researcher: ResearcherSettings  who proposes (name, options, calls in flight, timeout, lookahead)
      seed, budget_seconds

The ledger records the flat form (``to_json``: one key per setting, as always), so
every recorded session still reads back; the constructor takes the flat keywords
too (``SessionConfig(workers=2, keep="margin")``), and each flat name reads through
(``config.workers``). Sections are named after their concern; where a flat name is
the same word (``researcher``, ``fleet``, ``keep``), the flat name keeps its old
meaning (the researcher's name, the fleet file, the keep rule's name) and the
section is ``config.researcher_settings``, ``config.fleet_settings``, ``config.keep_rule``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labfleet.analysis.noise import DEFAULT_Z
from labfleet.scheduler.base import Limits


@dataclass(frozen=True)
class KeepRule:
    """What a result must do to be kept."""

    # "noise": beat the champion by z standard errors of the measured noise (or win a
    # confirmation repeat); "margin": by the fixed margin alone.
    rule: str = "noise"
    margin: float = 0.0  # a keep must beat the champion by more than this (metric units)
    z: float = DEFAULT_Z
    noise_repeats: int = 2  # extra seeds of the baseline per hardware class, to measure the noise
    confirm_repeats: int = 1  # extra seeds for a result better than the champion but within noise
    # with [tiers]: validate-class workers screen when no validation needs them, and
    # waiting winners get a cheap confirmation on the screen class
    backfill: bool = True
    # with [tiers]: a screened winner beyond the screen noise leads at once (the researcher
    # proposes around it) while its validation decides whether it is kept
    provisional: bool = True


@dataclass(frozen=True)
class FleetSettings:
    """Where runs go: the executor and its workers."""

    executor: str = "local"  # a name in labfleet.executors.EXECUTORS: local | ray | skypilot
    workers: int = 1
    threads: int = 1
    device: str = "cpu"
    hardware: str | None = None  # hardware class of local workers (None: cpu, or gpu with cuda)
    price: float = 0.0  # dollars per worker-hour (local workers; other executors know their own)
    ray_address: str | None = None
    file: str | None = None  # fleet.toml for the SkyPilot executor (flat name: ``fleet``)
    labfleet_spec: str = "labfleet"  # what SkyPilot clusters pip-install
    max_attempts: int = 3  # runs per experiment lost to infrastructure before giving up


@dataclass(frozen=True)
class ResearcherSettings:
    """Who proposes, and how the loop calls it."""

    name: str = "greedy"  # flat name: ``researcher``
    # options of the researcher (the LLM's provider, model, base URL, key variable's name: never a key)
    options: dict[str, Any] = field(default_factory=dict)  # flat name: ``researcher_options``
    calls: int = 1  # researcher calls in flight at once (each on its own thread)
    timeout: float = 900.0  # seconds a call may take before proposing backs off
    # Experiments proposed and materialized ahead of a free worker: dispatch is then a
    # ledger write and a process start, not a researcher call and a git commit.
    lookahead: int = 1


# flat name -> (section, field), in the order the ledger has always recorded them
FLAT: dict[str, tuple[str, str]] = {
    "researcher": ("researcher_settings", "name"),
    "workers": ("fleet_settings", "workers"),
    "threads": ("fleet_settings", "threads"),
    "device": ("fleet_settings", "device"),
    "budget_seconds": ("", "budget_seconds"),
    "seed": ("", "seed"),
    "margin": ("keep_rule", "margin"),
    "keep": ("keep_rule", "rule"),
    "z": ("keep_rule", "z"),
    "noise_repeats": ("keep_rule", "noise_repeats"),
    "confirm_repeats": ("keep_rule", "confirm_repeats"),
    "max_attempts": ("fleet_settings", "max_attempts"),
    "lookahead": ("researcher_settings", "lookahead"),
    "max_experiments": ("limits", "max_experiments"),
    "hours": ("limits", "hours"),
    "until": ("limits", "until"),
    "researcher_options": ("researcher_settings", "options"),
    "patience": ("limits", "patience"),
    "max_usd": ("limits", "max_usd"),
    "serve": ("limits", "serve"),
    "executor": ("fleet_settings", "executor"),
    "ray_address": ("fleet_settings", "ray_address"),
    "fleet": ("fleet_settings", "file"),
    "labfleet_spec": ("fleet_settings", "labfleet_spec"),
    "price": ("fleet_settings", "price"),
    "hardware": ("fleet_settings", "hardware"),
    "researcher_calls": ("researcher_settings", "calls"),
    "researcher_timeout": ("researcher_settings", "timeout"),
    "backfill": ("keep_rule", "backfill"),
    "provisional": ("keep_rule", "provisional"),
}
SECTIONS: dict[str, type] = {
    "limits": Limits, "keep_rule": KeepRule, "fleet_settings": FleetSettings, "researcher_settings": ResearcherSettings,
}


@dataclass(frozen=True, init=False)
class SessionConfig:
    """A session's settings, recorded in the ledger so a resume uses the same ones.

    ``SessionConfig(limits=Limits(hours=2), workers=4)``: sections first, then flat
    keywords over them. ``dataclasses.replace(config, workers=8)`` works the same way.
    """

    limits: Limits
    keep_rule: KeepRule
    fleet_settings: FleetSettings
    researcher_settings: ResearcherSettings
    seed: int
    budget_seconds: float | None  # None: the target's

    def __init__(
        self, limits: Limits | None = None, keep_rule: KeepRule | None = None,
        fleet_settings: FleetSettings | None = None, researcher_settings: ResearcherSettings | None = None,
        seed: int = 0, budget_seconds: float | None = None, **flat: Any,
    ) -> None:
        sections: dict[str, Any] = {
            "limits": limits or Limits(), "keep_rule": keep_rule or KeepRule(),
            "fleet_settings": fleet_settings or FleetSettings(),
            "researcher_settings": researcher_settings or ResearcherSettings(),
        }
        changes: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for name, value in flat.items():
            where = FLAT.get(name)
            if where is None or not where[0]:
                raise TypeError(f"SessionConfig got an unexpected keyword argument {name!r}")
            changes[where[0]][where[1]] = value
        for name, section in sections.items():
            object.__setattr__(self, name, dataclasses.replace(section, **changes[name]) if changes[name] else section)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "budget_seconds", budget_seconds)

    def __getattr__(self, name: str) -> Any:
        """A flat name (``workers``, ``keep``, ``researcher``, ...) reads from its section."""
        where = FLAT.get(name)
        if where is None or not where[0]:
            raise AttributeError(f"'SessionConfig' object has no attribute {name!r}")
        return getattr(object.__getattribute__(self, where[0]), where[1])

    def to_json(self) -> dict[str, Any]:
        """The flat form the ledger records (one key per setting)."""
        out: dict[str, Any] = {}
        for name, (section, key) in FLAT.items():
            value = getattr(self, key) if not section else getattr(getattr(self, section), key)
            out[name] = dict(value) if isinstance(value, dict) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionConfig:
        """A recorded config; keys it does not know (an older or newer labfleet's) are ignored."""
        return cls(**{k: v for k, v in data.items() if k in FLAT})

    def with_options(self, options: Mapping[str, Any], researcher_options: Mapping[str, Any] | None = None) -> SessionConfig:
        """These settings with ``options`` (flat names) over them; researcher options merge key by key."""
        merged = {**self.researcher_options, **(researcher_options or {})}
        return dataclasses.replace(self, **options, researcher_options=merged)  # type: ignore[arg-type, call-arg]
