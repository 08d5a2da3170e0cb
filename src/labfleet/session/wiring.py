"""The one place a session is wired: target, lock, ledger, researcher, executor, start or resume, loop.

``labfleet run`` / ``serve`` (through ``labfleet.api``), ``labfleet simulate`` and
the benchmarks all come here::

    with open_session(target, SessionConfig(workers=2), new=True) as wired:
        reason = wired.run()          # the loop, to its end
        wired.ledger ...              # read what it recorded before the ledger closes

Everything that can be refused is refused before anything is recorded: a second
orchestrator on the same ledger (the lock), nothing to resume, a bad device, changed
frozen files, an unknown researcher or option, a missing API key, an unreachable
cluster. A resume continues the latest unfinished session with its recorded
settings, the given options over them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from labfleet import frozen
from labfleet.errors import LabfleetError
from labfleet.executors.base import Executor
from labfleet.ledger import Ledger, SessionLock
from labfleet.researchers.base import Researcher
from labfleet.scheduler.proposing import Proposer
from labfleet.session.config import SessionConfig
from labfleet.session.loop import TICK_SECONDS, Event, SessionLoop, start_session
from labfleet.target import Target

DEVICES = ("cpu", "cuda", "mps")


@dataclass
class WiredSession:
    """A session ready to run: every stage made, the session recorded (or found), the lock held."""

    target: Target
    ledger: Ledger
    config: SessionConfig
    session_id: int
    resumed: bool
    researcher: Researcher
    executor: Executor
    loop: SessionLoop

    def run(self) -> str:
        """Run the loop until a limit is reached and nothing is left running; returns why it stopped."""
        return self.loop.run()


@contextmanager
def open_session(
    target: Target,
    config: SessionConfig | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    researcher_options: Mapping[str, Any] | None = None,
    resume: bool = False,
    new: bool = False,
    researcher: Researcher | None = None,
    executor: Executor | None = None,
    proposer: Callable[[Researcher, SessionConfig], Proposer] | None = None,
    clock: Callable[[], float] | None = None,
    on_event: Callable[[Event], None] = lambda event: None,
    on_warning: Callable[[str], None] | None = None,
    write_unread: bool = True,
) -> Iterator[WiredSession]:
    """Wire a session on ``target`` and hand it over; the ledger closes and the lock goes on exit.

    ``config``: the settings of a new session (default ``SessionConfig()``); ``options``
    (flat names) and ``researcher_options`` go over them, or over the recorded ones
    on a resume. Without ``resume`` or ``new`` the latest unfinished session is
    continued if there is one, else a new one starts; ``resume``: there must be one
    to continue; ``new``: always a new one. ``researcher`` / ``executor``: made from
    the settings unless given (the benchmarks' timed executor, the simulator's);
    ``proposer``: how the loop calls the researcher (the simulator's virtual
    latency); ``clock``: the ledger's and the loop's clock (the simulator's virtual
    clock: idle waits then jump instead of sleeping). ``on_warning`` hears that runs
    will not be boxed on this machine.
    """
    root = target.root
    lock = SessionLock(target.state_dir)
    lock.acquire()
    try:
        ledger = Ledger.for_target(target.state_dir)
    except BaseException:
        lock.release()
        raise
    try:
        if clock is not None:
            ledger.clock = clock
        latest = ledger.session()
        resuming = not new and latest is not None and latest["status"] != "finished"
        if resuming:
            assert latest is not None
            settings = SessionConfig.from_json(json.loads(latest["config"]))
        elif resume:
            raise LabfleetError("no unfinished session to resume (start one with `labfleet run`)")
        else:
            settings = config or SessionConfig()
        settings = settings.with_options(options or {}, researcher_options)
        if "source" in settings.researcher_options and settings.researcher != "hybrid":
            raise LabfleetError("--ideas-from applies to --researcher hybrid only")
        if settings.researcher_options.get("source") == "external":  # the hybrid's ideas come from an agent
            settings = settings.with_options({"serve": True})
        if settings.device not in DEVICES:
            raise LabfleetError(f"--device {settings.device!r}: use cpu, cuda or mps")
        # changed frozen files refuse before anything runs (a new session checks in start_session)
        if resuming:
            assert latest is not None
            frozen.check(target, json.loads(latest["frozen_hashes"]), latest["id"])
        if on_warning is not None:
            from labfleet import sandbox

            if not sandbox.support().boxed:
                on_warning(sandbox.support().warning)
        # an unknown researcher or option, a missing API key, an unreachable cluster:
        # all fail before anything is recorded
        if researcher is None:
            from labfleet.researchers import make_researcher

            researcher = make_researcher(settings.researcher, seed=settings.seed, target=target,
                                         **settings.researcher_options)
        if executor is None:
            from labfleet.executors import make_executor

            executor = make_executor(settings.fleet_settings, root)
        if resuming:
            assert latest is not None
            session_id = int(latest["id"])
            ledger.set_session_config(session_id, settings.to_json())
        else:
            session_id = start_session(target, ledger, settings)
        extra: dict[str, Any] = {}
        if clock is not None:
            extra["clock"] = clock
            extra["tick"] = math.inf if hasattr(clock, "advance_to") else TICK_SECONDS
        if proposer is not None:
            extra["proposer"] = proposer(researcher, settings)
        if not write_unread:
            extra["write_unread"] = False
        loop = SessionLoop(target=target, ledger=ledger, executor=executor, researcher=researcher,
                           session_id=session_id, config=settings, state_dir=target.state_dir, on_event=on_event,
                           **extra)
        yield WiredSession(target, ledger, settings, session_id, resuming, researcher, executor, loop)
    finally:
        ledger.close()
        lock.release()
