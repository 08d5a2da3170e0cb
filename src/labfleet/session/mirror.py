"""The session loop's own copy of what its researcher reads: history, pending, screened, patience.

Read whole from the ledger once, then kept up to date from the experiments this
connection's own writes change (``Ledger.touched``): a researcher call costs the
experiments that changed since the last one, not a pass over the session. It is read
whole again whenever SQLite's ``PRAGMA data_version`` moves (another connection
committed: ``labfleet submit``, ``promote``, a daemon's agents) or this connection
rolled a transaction back (``Ledger.rollbacks``), so it always equals a fresh read
(``Ledger.history``, the pending experiments' screening runs, ``decided_since_keep``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar, overload

from labfleet.enums import Role
from labfleet.errors import LedgerError
from labfleet.ledger import Ledger
from labfleet.records import Decision, Experiment, Result, Run, RunStatus

T = TypeVar("T")
KEEPS = (Decision.KEPT, Decision.BASELINE)
COUNTED = (Decision.KEPT, Decision.DISCARDED, Decision.FAILED)  # what ``decided_since_keep`` counts


class _ById(Generic[T]):
    """Values kept in experiment-id order: a change costs a bisection, a read one list copy."""

    def __init__(self, pairs: Iterable[tuple[int, T]] = ()) -> None:
        items = sorted(pairs, key=lambda p: p[0])
        self.ids = [i for i, _ in items]
        self.values = [v for _, v in items]

    def set(self, key: int, value: T) -> None:
        at = bisect.bisect_left(self.ids, key)
        if at < len(self.ids) and self.ids[at] == key:
            self.values[at] = value
        else:
            self.ids.insert(at, key)
            self.values.insert(at, value)

    def pop(self, key: int) -> None:
        at = bisect.bisect_left(self.ids, key)
        if at < len(self.ids) and self.ids[at] == key:
            del self.ids[at]
            del self.values[at]

    def frozen(self) -> tuple[T, ...]:
        return tuple(self.values)


class Frozen(Sequence[T]):
    """An immutable sequence made of immutable chunks: what ``_Chunked.frozen`` hands out, so a
    snapshot of a long history costs its chunk count, not its length (a researcher's
    ``state.history``; it iterates, indexes, slices and compares like the tuple it stands for)."""

    __slots__ = ("_chunks", "_len", "_starts")

    def __init__(self, chunks: tuple[tuple[T, ...], ...], length: int) -> None:
        self._chunks = chunks
        self._len = length
        self._starts: list[int] | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        return itertools.chain.from_iterable(self._chunks)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[T, ...]: ...

    def __getitem__(self, index: int | slice) -> T | tuple[T, ...]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if step != 1:
                return tuple(self)[index]
            return tuple(itertools.islice(self, start, stop)) if start < stop else ()
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("history index out of range")
        if self._starts is None:
            self._starts = list(itertools.accumulate((len(c) for c in self._chunks), initial=0))
        chunk = bisect.bisect_right(self._starts, index) - 1
        return self._chunks[chunk][index - self._starts[chunk]]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Frozen | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Frozen({tuple(self)!r})"


class _Chunked(Generic[T]):
    """``_ById`` for long sequences (the history): id-ordered chunks of at most ``2 * SIZE``,
    each frozen once per change, so a snapshot (``frozen``) re-freezes only what changed."""

    SIZE = 256

    def __init__(self, pairs: Iterable[tuple[int, T]] = ()) -> None:
        items = sorted(pairs, key=lambda p: p[0])
        self.ids: list[list[int]] = []
        self.values: list[list[T]] = []
        for at in range(0, len(items), self.SIZE):
            part = items[at:at + self.SIZE]
            self.ids.append([i for i, _ in part])
            self.values.append([v for _, v in part])
        self.maxes = [ids[-1] for ids in self.ids]
        self.cache: list[tuple[T, ...] | None] = [None] * len(self.ids)
        self.length = len(items)

    def _chunk(self, key: int) -> int:
        return min(bisect.bisect_left(self.maxes, key), len(self.maxes) - 1)

    def set(self, key: int, value: T) -> None:
        if not self.ids:
            self.ids, self.values, self.maxes, self.cache, self.length = [[key]], [[value]], [key], [None], 1
            return
        c = self._chunk(key)
        ids, values = self.ids[c], self.values[c]
        at = bisect.bisect_left(ids, key)
        self.cache[c] = None
        if at < len(ids) and ids[at] == key:
            values[at] = value
            return
        ids.insert(at, key)
        values.insert(at, value)
        self.length += 1
        self.maxes[c] = ids[-1]
        if len(ids) > 2 * self.SIZE:  # split: the chunk count stays about length / SIZE
            half = len(ids) // 2
            self.ids[c:c + 1] = [ids[:half], ids[half:]]
            self.values[c:c + 1] = [values[:half], values[half:]]
            self.maxes[c:c + 1] = [ids[half - 1], ids[-1]]
            self.cache[c:c + 1] = [None, None]

    def pop(self, key: int) -> None:
        if not self.ids:
            return
        c = self._chunk(key)
        ids = self.ids[c]
        at = bisect.bisect_left(ids, key)
        if at < len(ids) and ids[at] == key:
            del ids[at]
            del self.values[c][at]
            self.length -= 1
            self.cache[c] = None
            if ids:
                self.maxes[c] = ids[-1]
            else:
                del self.ids[c], self.values[c], self.maxes[c], self.cache[c]

    def frozen(self) -> Frozen[T]:
        cache = self.cache
        for c, chunk in enumerate(cache):
            if chunk is None:
                cache[c] = tuple(self.values[c])
        return Frozen(tuple(cache), self.length)  # type: ignore[arg-type]


def first_screen(exp: Experiment, runs: Iterable[Run]) -> Result | None:
    """A pending experiment's first done screening run (what ``SessionState.screened`` shows)."""
    if exp.parent_id is None:
        return None
    for run in runs:
        if run.role == Role.SCREEN and run.status == RunStatus.DONE and run.metric is not None:
            return Result(exp, run)
    return None


def latest(runs: Iterable[Run]) -> Run | None:
    """``Ledger.history``'s rule: the latest run, a done one when there is one."""
    have: Run | None = None
    for run in runs:
        if have is None or run.status == RunStatus.DONE or have.status != RunStatus.DONE:
            have = run
    return have


class SessionMirror:
    """History, pending, screened and the patience count of one session, as a fresh read gives them."""

    def __init__(self, ledger: Ledger, session_id: int) -> None:
        self.ledger = ledger
        self.session_id = session_id
        self.reads = 0  # whole reads so far (a test counts them)
        self._at: tuple[int, int] | None = None  # (data_version, rollbacks) of the last whole read
        self._history: _Chunked[Result] = _Chunked()
        self._pending: _ById[Experiment] = _ById()
        self._screened: _ById[Result] = _ById()
        self._keeps: set[int] = set()  # kept and baseline experiments
        self._keep_at = 0.0  # the latest keep's decision time
        self._since: dict[int, float] = {}  # decided after it -> when

    # ----------------------------------------------------------------- reads

    def history(self) -> Sequence[Result]:
        """Decided experiments with their latest run, by id: an immutable snapshot (``Frozen``)."""
        self.refresh()
        return self._history.frozen()

    def pending(self) -> tuple[Experiment, ...]:
        self.refresh()
        return self._pending.frozen()

    def screened(self) -> tuple[Result, ...]:
        self.refresh()
        return self._screened.frozen()

    def since_keep(self) -> int:
        self.refresh()
        return len(self._since)

    # ----------------------------------------------------------------- keeping up

    def refresh(self) -> None:
        at = (self.ledger.data_version(), self.ledger.rollbacks)
        if at != self._at:
            self._at = at
            self._read_all()
            return
        touched = self.ledger.touched
        if touched:
            self.ledger.touched = set()
            for exp_id in sorted(touched):
                self._update(exp_id)

    def _read_all(self) -> None:
        self.reads += 1
        self.ledger.touched = set()
        history, pending = self.ledger.history(self.session_id)
        self._history = _Chunked((r.experiment.id, r) for r in history)
        self._pending = _ById((e.id, e) for e in pending)
        screened = ((e.id, first_screen(e, self.ledger.runs_of(e.id))) for e in pending if e.parent_id is not None)
        self._screened = _ById((i, r) for i, r in screened if r is not None)
        self._read_patience()

    def _read_patience(self) -> None:
        self._keeps = {e.id for e in self.ledger.lineage(self.session_id)}
        self._keep_at, self._since = self.ledger.since_keep_state(self.session_id)

    def _update(self, exp_id: int) -> None:
        try:
            exp = self.ledger.experiment(exp_id)  # cached while its row is unchanged
        except LedgerError:
            return
        if exp.session_id != self.session_id:
            return
        runs = self.ledger.runs_of(exp_id)
        decided_at = self.ledger.decided_time(exp_id) if exp.decision != Decision.PENDING else None
        result = latest(runs)
        self._pending.pop(exp_id)
        self._screened.pop(exp_id)
        if exp.decision == Decision.PENDING:
            self._history.pop(exp_id)
            self._pending.set(exp_id, exp)
            screen = first_screen(exp, runs)
            if screen is not None:
                self._screened.set(exp_id, screen)
        elif result is None:
            self._history.pop(exp_id)
        else:
            self._history.set(exp_id, Result(exp, result))
        self._count(exp, decided_at)

    def _count(self, exp: Experiment, decided_at: float | None) -> None:
        """The patience count after ``exp``'s decision (time) changed."""
        if exp.decision in KEEPS:
            self._keeps.add(exp.id)
            if decided_at is not None and decided_at > self._keep_at:
                self._keep_at = decided_at
                self._since = {i: t for i, t in self._since.items() if t > decided_at}
        elif exp.id in self._keeps:  # a keep undone: count again from the ledger
            self._read_patience()
            return
        self._since.pop(exp.id, None)
        if (exp.decision in COUNTED and exp.parent_id is not None and decided_at is not None
                and decided_at > self._keep_at):
            self._since[exp.id] = decided_at
