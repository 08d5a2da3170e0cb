"""The executor contract: runs harness requests on worker slots.

Call order, driven only by the session loop:

    executor = LocalExecutor(...)          # or ray / skypilot / simulated
    executor.workers()                     # the slots: id, hardware class, price
    executor.start(job)                    # returns at once; the run goes on elsewhere
    executor.poll()                        # finished jobs since the last poll (never blocks long)
    executor.cancel(run_id)                # kill a running job (it is then reported by poll as lost)
    executor.adopt(job, handle)            # after an orchestrator restart: follow a job it started
    executor.wait(seconds)                 # idle: block until a job may have finished (at most seconds)
    executor.close()                       # stop everything still running

Rules every executor follows (the conformance suite in ``executors/conformance.py``
checks them):
- ``start`` never waits for the run, for setup or for anything slow.
- Each finished job is reported by ``poll`` exactly once, as a ``Finished`` with the
  harness's ``RunResult`` (any outcome), or with ``result=None`` and a reason when the
  infrastructure lost it (worker gone, harness died, cancelled). The session retries
  lost jobs; it never retries a result the harness returned.
- One job per worker at a time; ``start`` on a busy worker raises ``ExecutorError``.
- The harness writes ``result.json`` into the job's run directory before its process
  exits; ``adopt`` uses that to collect a run that finished while nobody was polling.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labfleet.errors import ExecutorError as ExecutorError  # re-exported: the contract names it
from labfleet.harness import RunRequest, RunResult


@dataclass(frozen=True)
class Worker:
    """A slot that runs one experiment at a time."""

    id: str  # unique within the fleet, e.g. "local-0"
    hardware: str  # hardware class: "cpu", "H100", "H200", ...
    device: str = "cpu"  # what the harness passes as LABFLEET_DEVICE
    threads: int = 1
    price_per_hour: float = 0.0


@dataclass(frozen=True)
class Job:
    """One run to execute: the harness request and the worker it is placed on."""

    run_id: int
    worker_id: str
    request: RunRequest
    # The experiment's knob values: real executors run the commit and ignore them; the
    # simulated executor's surrogate objective reads them instead of training.
    knobs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    """A job that ended: the harness's result, or None when it was lost."""

    run_id: int
    worker_id: str
    result: RunResult | None
    reason: str = ""  # why it was lost (when result is None)


class Executor(abc.ABC):
    """Base class for executors (see the module docstring for the call order)."""

    name: str = "executor"
    # Whether runs read the version (the commit) from the repository. False (the simulator,
    # whose model reads the knobs): the session may make versions in-process and write
    # them into git only when something in its own process reads them.
    reads_commits: bool = True

    @abc.abstractmethod
    def workers(self) -> list[Worker]:
        """The worker slots (stable ids)."""

    def available(self) -> list[Worker]:
        """The slots that can take a job now (a dead node's slots stay in ``workers()`` but not here)."""
        return self.workers()

    @abc.abstractmethod
    def start(self, job: Job) -> str:
        """Start a job on its worker and return a handle (e.g. a pid) to record in the ledger."""

    @abc.abstractmethod
    def poll(self) -> list[Finished]:
        """Jobs that finished since the last call; returns quickly."""

    @abc.abstractmethod
    def cancel(self, run_id: int) -> None:
        """Stop a running job; it is reported by ``poll`` as lost ("cancelled")."""

    @abc.abstractmethod
    def adopt(self, job: Job, handle: str) -> None:
        """Follow a job started by an earlier orchestrator (same run dir, recorded handle).

        If it already finished, the next ``poll`` reports its result; if its process is
        gone without a result, the next ``poll`` reports it lost.
        """

    @abc.abstractmethod
    def running(self) -> list[int]:
        """Run ids started or adopted and not yet reported by ``poll``."""

    def wait(self, seconds: float) -> None:
        """Block until a job may have finished, at most ``seconds`` (the loop calls it when idle).

        Real executors sleep; the simulated one advances its virtual clock instead.
        """
        time.sleep(seconds)

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every job still running and release resources."""
