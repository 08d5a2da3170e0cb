"""Executors, by name: where a session's runs go.

``make_executor(name_or_settings, root)`` is how the session gets one, as
``researchers.make_researcher`` is for researchers: ``local`` (processes on this
machine), ``ray`` (a Ray cluster) and ``skypilot`` (SkyPilot clusters from a
fleet.toml). The simulated executor is made by ``labfleet simulate`` itself (it
needs the surrogate and the virtual clock). Each factory imports its backend when
called, so the registry is cheap to import and a missing extra fails only when
that executor is chosen (with a message naming the extra).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from labfleet.errors import ConfigError

if TYPE_CHECKING:
    from labfleet.executors.base import Executor
    from labfleet.session.config import FleetSettings

__all__ = ["EXECUTORS", "make_executor"]


def _local(fleet: FleetSettings, root: Path) -> Executor:
    from labfleet.devices import local_devices
    from labfleet.executors.local import LocalExecutor

    devices = local_devices(fleet.device, fleet.workers)
    return LocalExecutor(fleet.workers, threads=fleet.threads, devices=devices, hardware=fleet.hardware,
                         price_per_hour=fleet.price)


def _ray(fleet: FleetSettings, root: Path) -> Executor:
    from labfleet.executors.ray import RayExecutor

    return RayExecutor(fleet.ray_address or "auto", threads=fleet.threads, price_per_hour=fleet.price)


def _skypilot(fleet: FleetSettings, root: Path) -> Executor:
    from labfleet.executors.skypilot import SkyPilotExecutor
    from labfleet.fleet import load_fleet

    if not fleet.file:
        raise ConfigError("--executor skypilot needs --fleet fleet.toml (see `labfleet fleet check --help`)")
    return SkyPilotExecutor(load_fleet(root / fleet.file), labfleet_spec=fleet.labfleet_spec)


# name -> factory(fleet settings, target root)
EXECUTORS: dict[str, Callable[[FleetSettings, Path], Executor]] = {
    "local": _local,
    "ray": _ray,
    "skypilot": _skypilot,
}


def make_executor(fleet: FleetSettings, root: Path) -> Executor:
    """The executor ``fleet.executor`` names, for the target at ``root``; ``ConfigError`` for an unknown name."""
    factory = EXECUTORS.get(fleet.executor)
    if factory is None:
        *others, last = EXECUTORS
        raise ConfigError(f"--executor {fleet.executor!r}: use {', '.join(others)} or {last}")
    return factory(fleet, root)
