"""The researcher off the loop: calls in flight, a pipeline ahead of the workers, backoff.

A model call can take minutes; the fleet must not wait for it. The session loop
asks a ``Proposer`` for proposals and goes on collecting, deciding and placing;
answers come back through ``answers()`` on a later tick. Call order (loop only):

    proposer.tell(state, result)   # a finished experiment: delivered to researcher.observe,
                                   # in order, before its next propose (results that arrive
                                   # during a call go into the next call together)
    proposer.can_ask(now)          # a call slot is free and no backoff is running
    proposer.ask(state, n, now)    # start a call: researcher.propose(state, n) off the loop
    proposer.answers(now)          # finished calls: proposals, model-usage records, error
    proposer.next_event(now)       # when an answer is due (virtual clocks), for the idle wait
    proposer.close()

Two implementations behind the same contract:

- ``ThreadProposer``: a thread per call (one in flight by default). A call that
  raises, or reports a failed model call, or runs past ``timeout`` seconds, backs
  proposing off (doubling, from ``waits[0]`` to ``waits[1]``); a timed-out call that
  answers later is still used (nothing it proposed is lost).
- ``VirtualProposer``: for the simulator's virtual clock. ``propose`` runs at once on
  the loop's thread (so a simulation stays deterministic per seed), and its answer is
  released ``latency`` virtual seconds later (a fixed figure or a seeded normal
  ``mean:sd``); an optional ``TokenModel`` records each call's tokens and dollars.

``pipeline_depth`` sizes how many proposals to keep queued ahead of the workers:
enough to cover the runs that finish during one call; ``runs_due`` counts them from
the running runs' start times (bursts included), and the loop takes the larger.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labfleet.errors import ConfigError
from labfleet.records import Proposal, Result, SessionState
from labfleet.researchers.base import Researcher

DEFAULT_TIMEOUT = 900.0  # seconds a propose call may take before proposing backs off
DEFAULT_WAITS = (15.0, 600.0)  # first and longest backoff pause, seconds


@dataclass(frozen=True)
class Answer:
    """One finished propose call."""

    asked: int
    proposals: list[Proposal]
    usage: list[dict[str, Any]]  # model-call records (tokens, dollars, errors: never a key)
    seconds: float  # how long the call took (virtual seconds on a virtual clock)
    error: str = ""  # the researcher raised (its message), or "" (see ``failed``)
    late: bool = False  # it had been timed out already

    @property
    def failed(self) -> bool:
        """The call raised, or its last model call failed (an outage: back off, ask again later)."""
        return bool(self.error) or bool(self.usage and not self.usage[-1].get("ok", True))


@dataclass(frozen=True)
class TokenModel:
    """Tokens and dollars of one simulated model call (defaults: a long-prompt call at Sonnet prices)."""

    model: str = "simulated"
    prompt_tokens: int = 12_000  # brief, files, analysis, recent history: about constant per call
    tokens_per_proposal: int = 400  # the answer grows with the proposals asked for
    usd_per_mtok_in: float = 3.0
    usd_per_mtok_out: float = 15.0

    def record(self, call: int, n: int, seconds: float) -> dict[str, Any]:
        out = self.tokens_per_proposal * max(n, 1)
        usd = (self.prompt_tokens * self.usd_per_mtok_in + out * self.usd_per_mtok_out) / 1e6
        return {"call": call, "purpose": f"wave of {n}", "provider": "simulated", "model": self.model,
                "input_tokens": self.prompt_tokens, "output_tokens": out, "usd": round(usd, 6),
                "seconds": round(seconds, 3), "ok": True, "error": ""}


def parse_latency(text: str | float | None) -> tuple[float, float]:
    """``"90"`` -> (90, 0); ``"60:30"`` -> mean 60, sd 30 (seconds). One-line ConfigError if bad."""
    if text is None or text == "":
        return 0.0, 0.0
    if isinstance(text, int | float):
        mean, sd = float(text), 0.0
    else:
        parts = str(text).split(":")
        try:
            mean, sd = float(parts[0]), float(parts[1]) if len(parts) == 2 else 0.0
        except ValueError:
            mean, sd = -1.0, 0.0
        if len(parts) > 2:
            mean = -1.0
    if not (math.isfinite(mean) and math.isfinite(sd)) or mean < 0 or sd < 0:
        raise ConfigError(f"--researcher-latency {text!r}: give SECONDS or MEAN:SD, both >= 0 (e.g. 90 or 60:30)")
    return mean, sd


def pipeline_depth(lookahead: int, latency: float, workers: int, run_seconds: float) -> int:
    """Proposals to keep queued ahead of the free workers.

    During one call of ``latency`` seconds about ``workers * latency / run_seconds``
    runs finish; the queue must hold that many (and half as many again for calls
    that answer with fewer than asked) or freed workers wait for the model.
    """
    if latency <= 0 or run_seconds <= 0:
        return lookahead
    return lookahead + math.ceil(1.5 * workers * latency / run_seconds)


def runs_due(started: Sequence[float], now: float, run_seconds: float, latency: float,
             until: float | None = None) -> int:
    """Running runs expected to end before the answer after next: what the queue must feed.

    One call in flight: a call asked now answers at ``now + latency``, and the next one
    (asked then) at ``now + 2 * latency``; every run ending before that takes its next
    run from the queue this call fills. Counting expected ends (start + the mean run
    time) instead of an average rate covers bursts: a fleet started together finishes
    together. Runs past the mean count as due now. ``until``: when proposing stops
    (--hours): a worker freed after it takes nothing new, so nothing is queued for it
    (a deeper queue would only stretch the session's tail).
    """
    if latency <= 0 or run_seconds <= 0:
        return 0
    horizon = now + 2 * latency if until is None else min(now + 2 * latency, until)
    return sum(1 for start in started if start + run_seconds <= horizon)


class RunRate:
    """The mean run time the pipeline is sized from: every run end counts (any role, crashes too).

    A worker's first run is cold (setup, compilation, a data download) and takes longer
    than the rest; cold runs count only until a warm one has ended, then warm ones alone.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._cold = (0, 0.0)  # (count, mean seconds)
        self._warm = (0, 0.0)

    def add(self, worker: str, seconds: float) -> None:
        if seconds < 0 or not math.isfinite(seconds):
            return
        cold = worker not in self._seen
        self._seen.add(worker)
        count, mean = self._cold if cold else self._warm
        count += 1
        mean += (seconds - mean) / min(count, 16)
        if cold:
            self._cold = (count, mean)
        else:
            self._warm = (count, mean)

    @property
    def seconds(self) -> float:
        """0 until a run has ended."""
        return self._warm[1] if self._warm[0] else self._cold[1]


class Proposer:
    """Base: observes delivered in order, backoff after failures, latency measured."""

    def __init__(self, researcher: Researcher, clock: Callable[[], float] = time.time,
                 waits: tuple[float, float] = DEFAULT_WAITS) -> None:
        self.researcher = researcher
        self.clock = clock
        self.waits = waits
        self.backoff = 0.0
        self.retry_at: float | None = None
        self.latency = 0.0  # running mean of call seconds
        self.calls = 0
        self._observes: list[tuple[SessionState, Result]] = []
        self._wants_observe = type(researcher).observe is not Researcher.observe

    @property
    def wants_observe(self) -> bool:
        return self._wants_observe

    def tell(self, state: SessionState, result: Result) -> None:
        if self._wants_observe:
            self._observes.append((state, result))

    def _deliver(self) -> None:
        pending, self._observes = self._observes, []
        for state, result in pending:
            self.researcher.observe(state, result)

    def _usage(self) -> list[dict[str, Any]]:
        drain = getattr(self.researcher, "drain_usage", None)
        return list(drain()) if drain is not None else []

    def _finished(self, answer: Answer, now: float) -> None:
        """Backoff bookkeeping and the latency estimate, once per answer."""
        self.calls += 1
        self.latency += (answer.seconds - self.latency) / min(self.calls, 8)
        if answer.failed:
            self.fail(now)
        elif not answer.late:
            self.backoff, self.retry_at = 0.0, None

    def fail(self, now: float) -> None:
        first, longest = self.waits
        self.backoff = min(max(2 * self.backoff, first), longest)
        self.retry_at = now + self.backoff

    def backing_off(self, now: float) -> bool:
        return self.retry_at is not None and now < self.retry_at

    # the contract -------------------------------------------------------------

    in_flight: int = 0

    def can_ask(self, now: float) -> bool:
        raise NotImplementedError

    def ask(self, state: SessionState, n: int, now: float) -> None:
        raise NotImplementedError

    def answers(self, now: float) -> tuple[list[Answer], list[str]]:
        """Finished calls, and messages about calls timed out since the last look."""
        raise NotImplementedError

    def next_event(self, now: float) -> float | None:
        return None

    def close(self) -> None:
        pass


@dataclass
class _Call:
    asked: int
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    timed_out: bool = False


class ThreadProposer(Proposer):
    """``researcher.propose`` on its own thread; up to ``calls`` in flight.

    With one call in flight (the default) the researcher is never called from two
    threads at once; with more, it must tolerate concurrent ``propose`` calls.
    """

    def __init__(self, researcher: Researcher, clock: Callable[[], float] = time.time,
                 waits: tuple[float, float] = DEFAULT_WAITS, calls: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(researcher, clock, waits)
        if calls < 1:
            raise ConfigError(f"researcher calls in flight must be at least 1, got {calls}")
        self.max_calls = calls
        self.timeout = timeout
        self._calls: list[_Call] = []
        self._lock = threading.Lock()  # one researcher call at a time (observe and propose)

    @property
    def in_flight(self) -> int:  # type: ignore[override]
        return sum(1 for c in self._calls if not c.timed_out)

    def can_ask(self, now: float) -> bool:
        return self.in_flight < self.max_calls and not self.backing_off(now)

    def ask(self, state: SessionState, n: int, now: float) -> None:
        call = _Call(n, time.monotonic())
        self._calls.append(call)
        observes, self._observes = self._observes, []
        thread = threading.Thread(target=self._run, args=(call, state, n, observes), daemon=True,
                                  name=f"labfleet-propose-{self.researcher.name}")
        thread.start()

    def _run(self, call: _Call, state: SessionState, n: int, observes: Sequence[tuple[SessionState, Result]]) -> None:
        proposals: list[Proposal] = []
        error = ""
        lock = self._lock if self.max_calls == 1 else None
        if lock is not None:
            lock.acquire()
        try:
            for s, r in observes:
                self.researcher.observe(s, r)
            proposals = list(self.researcher.propose(state, n))[:n]
        except Exception as exc:  # noqa: BLE001 - a failing researcher backs off, never ends the session
            error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            usage = self._usage()
            if lock is not None:
                lock.release()
        call.answer = Answer(n, proposals, usage, time.monotonic() - call.started, error)
        call.done.set()

    def answers(self, now: float) -> tuple[list[Answer], list[str]]:
        out: list[Answer] = []
        notes: list[str] = []
        for call in list(self._calls):
            if call.done.is_set():
                self._calls.remove(call)
                assert call.answer is not None
                answer = call.answer
                if call.timed_out:
                    answer = Answer(answer.asked, answer.proposals, answer.usage, answer.seconds, answer.error, late=True)
                self._finished(answer, now)
                out.append(answer)
            elif not call.timed_out and time.monotonic() - call.started > self.timeout:
                call.timed_out = True
                self.fail(now)
                notes.append(f"the researcher's call has run {self.timeout:.0f} s: timed out; "
                             f"proposing paused for {self.backoff:.0f} s (a late answer is still used)")
        return out, notes

    def pending(self) -> bool:
        return bool(self._calls)


class VirtualProposer(Proposer):
    """Simulated model latency on a virtual clock: deterministic per seed.

    ``propose`` runs at once (on the loop's thread); the answer is held until the clock
    reaches the call's end, ``latency`` seconds later (``sd`` > 0: a seeded normal,
    never below zero). With ``tokens``, each call records its tokens and dollars.
    """

    def __init__(self, researcher: Researcher, clock: Callable[[], float], waits: tuple[float, float] = DEFAULT_WAITS,
                 latency: float = 0.0, sd: float = 0.0, seed: int = 0, tokens: TokenModel | None = None,
                 calls: int = 1) -> None:
        super().__init__(researcher, clock, waits)
        self.mean, self.sd = latency, sd
        self.latency = latency  # the simulated model's speed is known before the first call ends
        self.rng = random.Random(f"researcher-latency-{seed}")
        self.tokens = tokens
        self.max_calls = calls
        self._held: list[tuple[float, int, Answer]] = []

    @property
    def in_flight(self) -> int:  # type: ignore[override]
        return len(self._held)

    def can_ask(self, now: float) -> bool:
        return len(self._held) < self.max_calls and not self.backing_off(now)

    def ask(self, state: SessionState, n: int, now: float) -> None:
        seconds = max(0.0, self.rng.gauss(self.mean, self.sd)) if self.sd > 0 else self.mean
        error = ""
        proposals: list[Proposal] = []
        try:
            self._deliver()
            proposals = list(self.researcher.propose(state, n))[:n]
        except Exception as exc:  # noqa: BLE001 - as ThreadProposer
            error = f"{type(exc).__name__}: {exc}"[:300]
        usage = self._usage()
        if self.tokens is not None:
            usage.append(self.tokens.record(self.calls + len(self._held) + 1, n, seconds))
        self._held.append((now + seconds, self.calls + len(self._held), Answer(n, proposals, usage, seconds, error)))

    def answers(self, now: float) -> tuple[list[Answer], list[str]]:
        ready = sorted(h for h in self._held if h[0] <= now)
        self._held = [h for h in self._held if h[0] > now]
        for _, _, answer in ready:
            self._finished(answer, now)
        return [a for _, _, a in ready], []

    def next_event(self, now: float) -> float | None:
        times = [t for t, _, _ in self._held]
        if self.retry_at is not None:
            times.append(self.retry_at)
        return min(times) if times else None

    def pending(self) -> bool:
        return bool(self._held)
