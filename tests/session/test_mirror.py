"""The session's mirror equals a fresh read of the ledger after every write, whoever wrote it."""

from __future__ import annotations

import random

import pytest

from labfleet.ledger import Ledger
from labfleet.records import Decision, RunStatus
from labfleet.session.mirror import SessionMirror, _Chunked, first_screen


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Boom(Exception):
    pass


def _fresh(ledger: Ledger, sid: int) -> tuple[object, ...]:
    """What the mirror must equal: the ledger read whole."""
    history, pending = ledger.history(sid)
    screened = [s for s in (first_screen(e, ledger.runs_of(e.id)) for e in pending) if s is not None]
    return tuple(history), tuple(pending), tuple(screened), ledger.decided_since_keep(sid)


def _mirrored(mirror: SessionMirror) -> tuple[object, ...]:
    return mirror.history(), mirror.pending(), mirror.screened(), mirror.since_keep()


def _step(rng: random.Random, ledger: Ledger, sid: int, base: int) -> None:
    """One random write: a new experiment, a run started or finished, a decision, a reopen, a refined metric."""
    exps = [e for e in ledger.experiments(sid) if e.parent_id is not None]
    queued = ledger.run_rows(sid, ["queued"])
    running = ledger.run_rows(sid, ["running"])
    kind = rng.choice(["add", "add", "start", "finish", "finish", "decide", "decide", "reopen", "metric", "repeat"])
    if kind == "add" or not exps:
        ledger.add_experiment(sid, parent_id=base, commit="c" * 40, patch="", description="x", hypothesis="",
                              knobs={"X": rng.randint(0, 10**6)}, tags={}, seed=rng.randint(0, 9),
                              budget_seconds=30.0, queue=rng.random() < 0.9)
    elif kind == "start" and queued:
        row = rng.choice(queued)
        ledger.mark_running(row["id"], worker=f"w{rng.randint(0, 3)}", hardware=rng.choice(["H100", "H200"]),
                            run_dir="/r", log_path="/r/log", budget_seconds=30.0)
    elif kind == "finish" and running:
        row = rng.choice(running)
        status = rng.choice([RunStatus.DONE, RunStatus.DONE, RunStatus.CRASHED, RunStatus.LOST])
        ledger.finish_run(row["id"], status, metric=rng.random() if status == RunStatus.DONE else None,
                          retry=status == RunStatus.LOST)
    elif kind == "decide":
        exp = rng.choice(exps)
        ledger.decide(exp.id, rng.choice([Decision.KEPT, Decision.DISCARDED, Decision.DISCARDED, Decision.FAILED]),
                      rng.random())
    elif kind == "reopen":
        ledger.reopen(rng.choice(exps).id)
    elif kind == "metric":
        ledger.set_metric(rng.choice(exps).id, rng.random())
    elif kind == "repeat":
        ledger.queue_run(sid, rng.choice(exps).id, seed=rng.randint(0, 9), role=rng.choice(["screen", "confirm"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_mirror_equals_a_fresh_read_through_two_connections_and_rollbacks(tmp_path, seed):
    rng = random.Random(seed)
    clock = _Clock()
    own = Ledger(tmp_path / "ledger.sqlite", clock)
    other = Ledger(tmp_path / "ledger.sqlite", clock)
    sid = own.create_session("t", "random", {}, "labfleet/s", "a" * 40, {})
    base, _ = own.add_experiment(sid, parent_id=None, commit="b" * 40, patch="", description="baseline",
                                 hypothesis="", knobs={"X": 0}, tags={}, seed=0, budget_seconds=30.0, queue=False)
    own.decide(base, Decision.BASELINE, 1.0)
    mirror = SessionMirror(own, sid)
    assert _mirrored(mirror) == _fresh(own, sid)
    kinds = {"own": 0, "other": 0, "rolled back": 0}
    longest = 0
    for _ in range(200):
        if rng.random() < 0.5:
            clock.now += rng.choice([0.0, 1.0, 30.0])  # several writes share one virtual instant
        choice = rng.random()
        if choice < 0.15:
            _step(rng, other, sid, base)  # `labfleet promote`, `submit`: another connection
            kinds["other"] += 1
        elif choice < 0.3:
            with pytest.raises(_Boom), own.batch():  # a step that fails: every write in it rolled back
                for _ in range(rng.randint(1, 4)):
                    _step(rng, own, sid, base)
                if rng.random() < 0.5:
                    _mirrored(mirror)  # read in the middle of the batch that is then rolled back
                raise _Boom
            kinds["rolled back"] += 1
        else:
            with own.batch():
                for _ in range(rng.randint(1, 3)):
                    _step(rng, own, sid, base)
            kinds["own"] += 1
        assert _mirrored(mirror) == _fresh(own, sid)
        longest = max(longest, mirror.since_keep())
    assert min(kinds.values()) > 15
    history, pending, screened, _ = _mirrored(mirror)
    assert history and pending and screened and longest > 1  # the walk reached every part of the state
    assert mirror.reads < kinds["other"] + kinds["rolled back"] + 2  # own writes are followed, not read whole


def test_the_experiment_cache_forgets_writes_rollbacks_and_other_connections(tmp_path):
    own = Ledger(tmp_path / "ledger.sqlite")
    other = Ledger(tmp_path / "ledger.sqlite")
    sid = own.create_session("t", "random", {}, "labfleet/s", "a" * 40, {})
    exp, _ = own.add_experiment(sid, parent_id=None, commit="b" * 40, patch="", description="baseline",
                                hypothesis="", knobs={"X": 0}, tags={}, seed=0, budget_seconds=30.0)
    assert own.experiment(exp).decision == Decision.PENDING
    own.decide(exp, Decision.BASELINE, 1.0)
    assert own.experiment(exp).decision == Decision.BASELINE
    with pytest.raises(_Boom), own.batch():
        own.set_metric(exp, 5.0)
        assert own.experiment(exp).metric == 5.0
        raise _Boom
    assert own.experiment(exp).metric == 1.0
    other.reopen(exp)
    assert own.experiment(exp).decision == Decision.PENDING


def test_the_chunked_history_is_the_sorted_sequence_its_snapshots_froze(monkeypatch):
    monkeypatch.setattr(_Chunked, "SIZE", 2)  # tiny chunks: every split and emptied chunk is walked
    rng = random.Random(0)
    chunked: _Chunked[int] = _Chunked((i, -i) for i in range(7))
    model = {i: -i for i in range(7)}
    snapshots = []
    for _ in range(400):
        key = rng.randint(0, 40)
        if rng.random() < 0.6:
            chunked.set(key, key * 10)
            model[key] = key * 10
        else:
            chunked.pop(key)
            model.pop(key, None)
        frozen = chunked.frozen()
        want = tuple(model[k] for k in sorted(model))
        assert frozen == want and len(frozen) == len(want)
        assert [frozen[i] for i in range(-len(want), len(want))] == list(want + want)
        assert frozen[-3:] == want[-3:] and frozen[1:4] == want[1:4] and frozen[::2] == want[::2]
        snapshots.append((frozen, want))
    assert all(frozen == want for frozen, want in snapshots)  # later changes never reach an earlier snapshot
    with pytest.raises(IndexError):
        chunked.frozen()[len(model)]
