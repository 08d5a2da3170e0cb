"""Every built-in researcher passes the conformance suite shipped in labfleet.testing.conformance."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labfleet.records import Proposal
from labfleet.researchers import RESEARCHERS, make_researcher
from labfleet.researchers.base import Researcher
from labfleet.testing import conformance
from labfleet.testing.conformance import Bench
from labfleet.testing.scripted import ScriptedResearcher
from tests.fake_llm import FakeLLM, Reply

# Three independent changes to the knob fixture target's train.py (they touch different lines).
IDEAS = [
    {"name": "DEEPER", "description": "N_LAYER 2 -> 3", "hypothesis": "more capacity",
     "edits": [{"file": "train.py", "search": "N_LAYER = 2", "replace": "N_LAYER = 3"}]},
    {"name": "FASTER", "description": "LEARNING_RATE 1e-3 -> 2e-3", "hypothesis": "a larger step",
     "edits": [{"file": "train.py", "search": "LEARNING_RATE = 1e-3  # step size",
                "replace": "LEARNING_RATE = 2e-3  # step size"}]},
    {"name": "NAPLESS", "description": "a named constant for the sleep", "hypothesis": "no effect: a control",
     "edits": [{"file": "train.py", "search": "SLEEP = 0.0", "replace": "SLEEP = 0.0  # seconds"}]},
]

MODEL = {"provider": "anthropic", "model": "fake-model"}
BUILT_IN: dict[str, dict[str, object]] = {
    "cmaes": {}, "external": {}, "greedy": {}, "grid": {}, "optuna": {}, "random": {}, "waves": {},
    "llm": MODEL, "ideas": {**MODEL, "ideas": 3}, "hybrid": MODEL,
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM(responder=lambda request: Reply(IDEAS)) as server:
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-conformance-KEY123")


def test_every_built_in_researcher_is_in_the_suite():
    named = {options.get("ideas") and "ideas" or name for name, options in BUILT_IN.items()}
    assert set(RESEARCHERS) <= set(BUILT_IN) and named >= set(RESEARCHERS)


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_researcher_conformance(name, check, tmp_path, fake):
    options = dict(BUILT_IN[name])
    kind = "llm" if name == "ideas" else name
    if "provider" in options:
        options["base_url"] = fake.url

    def factory(bench: Bench) -> Researcher:
        return make_researcher(kind, seed=0, target=bench.target, **options)

    check(factory, tmp_path)


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_the_scripted_researcher_conforms(check, tmp_path):
    def factory(bench: Bench) -> Researcher:
        return ScriptedResearcher([Proposal("lr up", knobs={"LEARNING_RATE": 3e-3}),
                                   Proposal("deeper", knobs={"N_LAYER": 3})])

    check(factory, tmp_path)


def test_the_suite_catches_a_researcher_that_breaks_the_contract(tmp_path):
    class Greedy(ScriptedResearcher):
        def propose(self, state, n):
            return [Proposal(f"lr {i}", knobs={"LEARNING_RATE": 1e-3 * (i + 2)}) for i in range(n + 1)]

    class OutOfRange(ScriptedResearcher):
        def propose(self, state, n):
            return [Proposal("lr huge", knobs={"LEARNING_RATE": 5.0})]

    class Writer(ScriptedResearcher):
        def propose(self, state, n):
            (conformance_root[0] / "notes.md").write_text("the researcher wrote here")
            return []

    conformance_root: list = []

    def writer(bench: Bench) -> Researcher:
        conformance_root[:] = [bench.root]
        return Writer()

    with pytest.raises(AssertionError, match="proposals for n=1"):
        conformance.check_proposes_at_most_n_runnable_proposals(lambda bench: Greedy(), tmp_path / "a")
    with pytest.raises(AssertionError, match="out of range"):
        conformance.check_proposes_at_most_n_runnable_proposals(lambda bench: OutOfRange(), tmp_path / "b")
    with pytest.raises(AssertionError, match="changed the target's repository"):
        conformance.check_changes_nothing(writer, tmp_path / "c")
