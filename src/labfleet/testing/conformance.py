"""The researcher conformance suite: what every researcher must do, checked on a real target.

Use it from a test module (every built-in researcher passes it, ``tests``)::

    from labfleet.testing import conformance

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        check(lambda bench: make_researcher("mine", seed=0, target=bench.target), tmp_path)

A factory gets a ``Bench``: the knob fixture target (``testing.targets``, a real git
repo) loaded, and its baseline as a recorded experiment. Each check builds
``SessionState`` snapshots over it (pure records, no ledger, no processes) and holds
the researcher to ``researchers/base.py``:

- ``propose(state, n)`` returns a list of at most ``n`` ``Proposal`` records;
- every proposal is runnable: knob names of the target with values inside their
  ranges, a patch that the one patch checker accepts and that applies to its parent,
  a parent the state knows, string tags;
- it works after a restart (a history it never observed, failures included) and
  after ``observe`` of each finished experiment;
- it changes nothing: not the snapshot, not the target's repository (HEAD, refs,
  index, work tree);
- with nothing to start from (no baseline, no champion) it proposes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labfleet import workspace
from labfleet.records import Decision, Experiment, Proposal, Result, SessionState
from labfleet.researchers.base import Researcher
from labfleet.target import Target, load_target
from labfleet.testing import snapshots
from labfleet.testing.targets import knob_target


@dataclass(frozen=True)
class Bench:
    """What the checks run against: a real knob target and its baseline."""

    target: Target
    baseline: Experiment

    @property
    def root(self) -> Path:
        return Path(self.target.root)

    def state(self, history: tuple[Result, ...] = (), pending: tuple[Experiment, ...] = (),
              champion: Experiment | None = None, free: int = 4) -> SessionState:
        return snapshots.state(history, pending, champion=champion, knobs=self.target.knobs,
                               baseline=self.baseline, free=free)

    def child(self, knobs: dict[str, object], metric: float | None, **tags: str) -> Result:
        """A finished experiment one knob change away from the baseline (crashed when metric is None)."""
        values = {**self.baseline.knobs, **knobs}
        exp = snapshots.experiment(values, Decision.DISCARDED if metric is not None else Decision.FAILED,
                                   parent=self.baseline.id, tags=tags, commit=self.baseline.commit)
        return snapshots.result(exp, metric)


ResearcherFactory = Callable[[Bench], Researcher]


def make_bench(folder: Path) -> Bench:
    """The knob fixture target in ``folder`` and its baseline experiment (id 1, metric 2.0)."""
    target = load_target(knob_target(folder))
    baseline = snapshots.experiment(target.read_knobs(), Decision.BASELINE, parent=None, exp_id=1, metric=2.0,
                                    commit=workspace.resolve(target.root))
    return Bench(target, baseline)


def _repo_state(root: Path) -> tuple[str, str, str]:
    """HEAD, every ref and the porcelain status: what a researcher must leave as it was."""
    return (workspace.resolve(root), workspace.git(root, "for-each-ref"),
            workspace.git(root, "status", "--porcelain", "--untracked-files=all"))


def _assert_runnable(bench: Bench, state: SessionState, proposals: list[Proposal], n: int) -> None:
    assert isinstance(proposals, list), f"propose returned {type(proposals).__name__}, not a list"
    assert len(proposals) <= n, f"{len(proposals)} proposals for n={n}"
    known = {r.experiment.id: r.experiment for r in state.history}
    known.update({e.id: e for e in state.pending})
    for exp in (state.baseline, state.champion):
        if exp is not None:
            known[exp.id] = exp
    editable = bench.target.spec.editable
    for p in proposals:
        assert isinstance(p, Proposal), f"{p!r} is not a Proposal"
        assert isinstance(p.description, str) and p.description.strip(), "a proposal needs a description"
        assert p.knobs or p.patch, f"{p.description!r} changes nothing (no knobs, no patch)"
        for name, value in p.knobs.items():
            assert name in bench.target.knobs, f"{p.description!r}: unknown knob {name}"
            assert bench.target.knobs[name].contains(value), f"{p.description!r}: {name}={value!r} out of range"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in p.tags.items()), f"tags {dict(p.tags)}"
        assert p.parent is None or p.parent in known, f"{p.description!r}: parent e{p.parent} is not in the state"
        if p.patch:
            parent = known[p.parent] if p.parent is not None else (state.champion or state.baseline)
            assert parent is not None
            workspace.check_patch(bench.root, p.patch, editable)
            workspace.commit_patch(bench.root, parent.commit, p.patch, "conformance", editable)  # it applies


def check_proposes_at_most_n_runnable_proposals(factory: ResearcherFactory, tmp_path: Path) -> None:
    bench = make_bench(tmp_path / "target")
    researcher = factory(bench)
    for n in (1, 3):
        state = bench.state(free=n)
        _assert_runnable(bench, state, researcher.propose(state, n), n)


def check_resumes_from_a_history_it_never_saw(factory: ResearcherFactory, tmp_path: Path) -> None:
    """After a restart ``observe`` is not replayed: the history alone must do, failures included."""
    bench = make_bench(tmp_path / "target")
    history = (bench.child({"LEARNING_RATE": 3e-3}, 1.9), bench.child({"N_LAYER": 3}, None),
               bench.child({"LEARNING_RATE": 3e-4}, 2.2))
    state = bench.state(history)
    _assert_runnable(bench, state, factory(bench).propose(state, 2), 2)


def check_observes_then_proposes(factory: ResearcherFactory, tmp_path: Path) -> None:
    bench = make_bench(tmp_path / "target")
    researcher = factory(bench)
    history: list[Result] = []
    first = researcher.propose(bench.state(), 2)
    _assert_runnable(bench, bench.state(), first, 2)
    for i, metric in enumerate((1.95, None, 2.05)):
        done = bench.child({"LEARNING_RATE": [3e-3, 1e-2, 3e-4][i]}, metric)
        history.append(done)
        researcher.observe(bench.state(tuple(history)), done)
    state = bench.state(tuple(history))
    _assert_runnable(bench, state, researcher.propose(state, 2), 2)


def check_changes_nothing(factory: ResearcherFactory, tmp_path: Path) -> None:
    """Not the snapshot it is given, not the target's repository."""
    bench = make_bench(tmp_path / "target")
    before = _repo_state(bench.root)
    researcher = factory(bench)
    done = bench.child({"LEARNING_RATE": 3e-3}, 1.9)
    state = bench.state((done,))
    copy = dataclasses.replace(state)
    researcher.observe(state, done)
    researcher.propose(state, 3)
    assert state == copy
    assert _repo_state(bench.root) == before, "the researcher changed the target's repository"


def check_nothing_to_start_from(factory: ResearcherFactory, tmp_path: Path) -> None:
    """No baseline and no champion yet (the session records the baseline first): no proposals."""
    bench = make_bench(tmp_path / "target")
    state = snapshots.state(knobs=bench.target.knobs, baseline=None)
    assert factory(bench).propose(state, 2) == []


CHECKS: list[Callable[[ResearcherFactory, Path], None]] = [
    check_proposes_at_most_n_runnable_proposals,
    check_resumes_from_a_history_it_never_saw,
    check_observes_then_proposes,
    check_changes_nothing,
    check_nothing_to_start_from,
]
