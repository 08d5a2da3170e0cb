"""The fleet: which clusters to run experiments on, read from ``fleet.toml``.

A fleet is a list of pools; each pool is ``count`` identical clusters (one worker
slot each) with the same accelerators, infra and price::

    [[pool]]
    name = "h100"              # optional; default from the accelerator ("h100")
    accelerators = "H100:1"    # per cluster (SkyPilot's accelerator string)
    count = 13                 # clusters (= worker slots) in this pool
    infra = "k8s"              # SkyPilot's infra string: "k8s", "aws", "gcp/us-central1", ...
    price_per_hour = 2.49      # per cluster: cost figures and `fleet check`
    idle_minutes = 10          # autostop (teardown) after this long idle
    use_spot = false
    managed = false            # true: experiments run as managed jobs (spot recovery)

``load_fleet(path)`` validates it (every problem is a one-line ``ConfigError`` naming
the field, like ``labfleet.toml``'s); ``Fleet.workers()`` gives the session's worker
slots and ``Fleet.describe()`` says what would be launched and what it costs per hour.
Nothing here imports SkyPilot: a fleet can be checked without it installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labfleet.errors import ConfigError
from labfleet.executors.base import Worker
from labfleet.target import parse_toml

FLEET_FILE = "fleet.toml"
DEFAULT_CLUSTER_PREFIX = "labfleet"
_ACCELERATORS = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)(?::(\d+(?:\.\d+)?))?$")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9-]*$")  # becomes part of cluster names


class Pool(BaseModel):
    """``[[pool]]``: ``count`` identical clusters, one experiment at a time each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # "" until validated: then the accelerator's name, lower-cased
    accelerators: str
    count: int = Field(gt=0)
    infra: str = "k8s"
    price_per_hour: float = Field(default=0.0, ge=0)
    idle_minutes: int = Field(default=10, gt=0)
    use_spot: bool = False
    managed: bool = False
    threads: int = Field(default=1, gt=0)  # CPU threads per experiment (LABFLEET_THREADS)

    @field_validator("accelerators")
    @classmethod
    def _accelerator_string(cls, value: str) -> str:
        match = _ACCELERATORS.match(value.strip())
        if match is None or (match.group(2) is not None and float(match.group(2)) <= 0):
            raise ValueError(f"{value!r} is not an accelerator string like 'H100:1'")
        return value.strip()

    @field_validator("infra")
    @classmethod
    def _infra_string(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value.strip()):
            raise ValueError(f"{value!r} is not an infra string like 'k8s' or 'gcp/us-central1'")
        return value.strip()

    @model_validator(mode="after")
    def _default_name(self) -> Pool:
        name = self.name or self.hardware.lower().replace("_", "-").replace(".", "-")
        if not _POOL_NAME.match(name):
            raise ValueError(f"name {name!r} must be lower-case letters, digits and dashes (it names clusters)")
        object.__setattr__(self, "name", name)
        return self

    @property
    def hardware(self) -> str:
        """The hardware class results are compared within: the accelerator's name ("H100")."""
        return self.accelerators.split(":", 1)[0]

    def worker_ids(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


class FleetConfig(BaseModel):
    """The whole ``fleet.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: list[Pool] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> FleetConfig:
        seen: set[str] = set()
        for pool in self.pool:
            if pool.name in seen:
                raise ValueError(f"pool name {pool.name!r} is used twice: give one of them a `name`")
            seen.add(pool.name)
        return self


@dataclass(frozen=True)
class Fleet:
    """A validated fleet: pools of clusters, and the worker slots they give the session."""

    pools: tuple[Pool, ...]
    source: str = FLEET_FILE

    def workers(self) -> list[Worker]:
        """One worker per cluster: id "<pool>-<i>", the accelerator's class, the pool's price."""
        return [
            Worker(id=wid, hardware=pool.hardware, device="cuda", threads=pool.threads,
                   price_per_hour=pool.price_per_hour)
            for pool in self.pools for wid in pool.worker_ids()
        ]

    def pool_of(self, worker_id: str) -> Pool:
        for pool in self.pools:
            if worker_id in pool.worker_ids():
                return pool
        raise ConfigError(f"{self.source}: no pool has a worker {worker_id!r}")

    def cost_per_hour(self) -> float:
        return sum(pool.price_per_hour * pool.count for pool in self.pools)

    def describe(self, cluster_prefix: str = DEFAULT_CLUSTER_PREFIX) -> list[str]:
        """What this fleet would launch and what it costs per hour, one line per fact."""
        lines: list[str] = []
        for pool in self.pools:
            names = [cluster_name(cluster_prefix, wid) for wid in pool.worker_ids()]
            shown = ", ".join(names) if len(names) <= 3 else f"{names[0]} .. {names[-1]}"
            mode = "managed jobs" if pool.managed else "cluster job queue"
            lines.append(
                f"pool {pool.name}: {pool.count} x {pool.accelerators} on {pool.infra}"
                f" ({'spot' if pool.use_spot else 'on-demand'}, {mode}, autostop after {pool.idle_minutes} min idle)"
            )
            lines.append(f"  clusters: {shown}")
            lines.append(
                f"  ${pool.price_per_hour:.2f}/h per cluster, ${pool.price_per_hour * pool.count:.2f}/h for the pool"
            )
        clusters = sum(pool.count for pool in self.pools)
        lines.append(f"total: {clusters} cluster{'s' * (clusters != 1)}, ${self.cost_per_hour():.2f}/h")
        return lines


def cluster_name(prefix: str, worker_id: str) -> str:
    """The SkyPilot cluster that backs a worker slot, e.g. "labfleet-h100-0"."""
    return f"{prefix}-{worker_id}" if prefix else worker_id


def parse_fleet_toml(text: str, source: str = FLEET_FILE) -> Fleet:
    config = parse_toml(FleetConfig, text, source)
    return Fleet(pools=tuple(config.pool), source=source)


def load_fleet(path: Path | str) -> Fleet:
    """Read and validate a ``fleet.toml``; a missing or bad file is one ``ConfigError`` line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read fleet file {path}: {exc.strerror or exc}") from None
    return parse_fleet_toml(text, source=str(path))
