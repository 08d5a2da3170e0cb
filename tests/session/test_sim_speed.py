"""The simulator's fast paths decide exactly what the slow ones decided.

In-process commits (``workspace.LazyCommits``) against git's own, the knob patch
without sequence matching against difflib, the loop's incremental history against
``Ledger.history``: same seed, same session.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from labfleet import workspace
from labfleet.errors import GitError, PatchError
from labfleet.executors.simulated import SimulatedExecutor
from labfleet.ledger import Ledger
from labfleet.session import SessionLoop
from labfleet.simulate import clone_target, simulate
from labfleet.target import _render_ast, knob_patch, load_target, read_constant, render_knobs, unified_diff

TINYGPT = Path(__file__).resolve().parents[2] / "src" / "labfleet" / "targets" / "tinygpt"


def _changed_lines(patch: str) -> list[str]:
    return [ln for ln in patch.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def _session(name: str, tmp_path: Path, **kw: object) -> dict[str, object]:
    """A fixed-seed tiered waves session (keeps, validations, a moving lineage): its ledger as data."""
    with clone_target(None) as folder:
        sim = simulate(folder, "H100:3,H200:1", researcher="waves", hours=0.75, seed=5, budget_seconds=300.0,
                       screen=["H100"], validate=["H200"], **kw)  # type: ignore[arg-type]
        ledger = Ledger.for_target(folder / ".labfleet")
        exps = [(e.id, e.parent_id, e.knobs, e.decision, e.metric, e.tags, _changed_lines(e.patch), e.commit)
                for e in ledger.experiments(sim.session_id)]
        runs = [(r.id, r.experiment_id, r.status, r.worker, r.started_at, r.ended_at, r.metric, r.role, r.seed)
                for r in ledger.runs(sim.session_id)]
        branch = ledger.session(sim.session_id)["branch"]
        head = workspace.resolve(folder, f"refs/heads/{branch}")
        files = {e[7]: workspace.show_file(folder, e[7], "train.py") for e in exps if e[3] in ("kept", "baseline")}
        unwritten = sum(1 for e in exps if e[7] and subprocess_missing(folder, e[7]))
        run_files = sum(1 for _ in (folder / ".labfleet" / "runs").rglob("result.json")) \
            if (folder / ".labfleet" / "runs").exists() else 0
        ledger.close()
    return {"exps": exps, "runs": runs, "head_tree": head, "kept_files": files, "unwritten": unwritten,
            "run_files": run_files, "sim": sim}


def subprocess_missing(folder: Path, sha: str) -> bool:
    import subprocess

    return subprocess.run(["git", "-C", str(folder), "cat-file", "-e", f"{sha}^{{commit}}"],
                          capture_output=True).returncode != 0


def test_a_fixed_seed_simulation_decides_the_same_with_in_process_commits(tmp_path, monkeypatch):
    original = SessionLoop.history

    def checked(self: SessionLoop):  # the incremental history is the ledger's, at every call
        history, pending = original(self)
        assert (history, pending) == self.ledger.history(self.session_id)
        return history, pending

    monkeypatch.setattr(SessionLoop, "history", checked)
    lazy = _session("lazy", tmp_path)
    thrown = _session("thrown", tmp_path, keep_files=False)
    monkeypatch.setattr(SimulatedExecutor, "reads_commits", True)  # every version through git, as before
    slow = _session("git", tmp_path)

    def strip(exps):  # commit shas differ (git's carry the wall-clock time of the commit)
        return [e[:7] for e in exps]

    assert len(slow["exps"]) > 10 and any(e[3] == "kept" for e in slow["exps"])
    assert strip(lazy["exps"]) == strip(slow["exps"]) == strip(thrown["exps"])
    assert lazy["runs"] == slow["runs"] == thrown["runs"]
    # kept versions are real commits whose files hold the recorded knob values
    for exp in lazy["exps"] + thrown["exps"]:
        if exp[3] == "kept":
            text = (lazy["kept_files"] if exp in lazy["exps"] else thrown["kept_files"])[exp[7]]
            assert {name: read_constant(text, name, "train.py") for name in exp[2]} == exp[2]
    assert lazy["unwritten"] == 0 and lazy["run_files"] > 0  # kept simulation: everything written
    assert thrown["unwritten"] > 0 and thrown["run_files"] == 0  # throw-away: only what was read


def _repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "train.py").write_text("LR = 1\nX = 2\n")
    (repo / "sub" / "f.txt").write_text("a\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    head = workspace.init_repo(repo, "init")
    return repo, head


def _edit(path: str, text: str, value: object) -> str:
    return re.sub(r"^LR = .*$", f"LR = {value}", text, flags=re.M)


def test_lazy_commits_hash_as_git_does_and_are_written_when_named(tmp_path):
    repo, head = _repo(tmp_path)
    lazy = workspace.LazyCommits(repo, _edit)
    try:
        a = lazy.commit(head, {"train.py": 5}, "a")
        b = lazy.commit(a, {"train.py": 7}, "b: ünïcode\nsecond line")
        c = lazy.commit(head, {"train.py": 9}, "c")
        for sha, exp_id in ((a, 1), (b, 2), (c, 3)):
            lazy.name(sha, f"refs/labfleet/s1/e{exp_id}")
        assert lazy.pending == 3 and subprocess_missing(repo, b)
        # any git call naming b writes it and its unwritten parent (git must agree on both shas)
        assert workspace.show_file(repo, b, "train.py") == "LR = 7\nX = 2\n"
        assert lazy.pending == 1 and not subprocess_missing(repo, a) and subprocess_missing(repo, c)
        assert workspace.resolve(repo, "refs/labfleet/s1/e2") == b
        with pytest.raises(PatchError, match="changes nothing"):
            lazy.commit(head, {"train.py": 1}, "same")
        with pytest.raises(GitError, match="root-level"):
            lazy.commit(head, {"sub/f.txt": 1}, "nested")
    finally:
        lazy.close(write_all=True)
    assert workspace.resolve(repo, "refs/labfleet/s1/e3") == c
    assert workspace.git(repo, "log", "-1", "--format=%B", b).strip() == "b: ünïcode\nsecond line"
    assert workspace.git(repo, "fsck", "--strict", "--no-dangling").strip() == ""
    assert workspace.git(repo, "ls-tree", c, "run.sh").split()[0] == "100755"  # modes kept
    assert "refs/labfleet/tmp" not in workspace.git(repo, "for-each-ref")


def test_unread_lazy_commits_are_left_unwritten_on_a_throw_away_close(tmp_path):
    repo, head = _repo(tmp_path)
    lazy = workspace.LazyCommits(repo, _edit)
    sha = lazy.commit(head, {"train.py": 3}, "never read")
    lazy.close(write_all=False)
    assert subprocess_missing(repo, sha)
    again = workspace.LazyCommits(repo, _edit)  # closing unregistered the store
    again.close()


def test_the_knob_patch_is_the_one_difflib_gives():
    target = load_target(TINYGPT, check_files=False)
    source = (TINYGPT / "train.py").read_text()
    rng = random.Random(0)
    for _ in range(200):
        names = rng.sample(sorted(target.knobs), rng.randint(1, len(target.knobs)))
        values = {n: rng.choice(k.choices) if k.choices else rng.uniform(k.low, k.high)
                  for n in names for k in [target.knobs[n]]}
        rendered = render_knobs(source, values, "train.py")
        assert rendered == _render_ast(source, values, "train.py")
        assert knob_patch(target, values, {"train.py": source}) == unified_diff("train.py", source, rendered)


def test_two_knobs_on_one_line_and_values_over_lines_take_the_general_path():
    text = 'A = 1; B = 2\nC = (\n    3\n)\nD = ("x"\n     "y")\n'
    values = {"A": 5, "B": 6, "C": 7, "D": "z"}
    assert render_knobs(text, values) == _render_ast(text, values, "<source>") == "A = 5; B = 6\nC = (\n    7\n)\nD = ('z')\n"


def test_the_loops_history_follows_writes_from_other_connections(tmp_path):
    """`labfleet promote` or a daemon's agent write through their own connection: the loop reads again."""
    from tests.conftest import make_target
    from tests.executors.test_simulated import KNOBS_TOML, TRAIN
    from tests.executors.test_simulated import simulate as simulate_session

    folder = make_target(tmp_path / "lab", TRAIN, signed=False, budget=300, timeout=600, extra_toml=KNOBS_TOML)
    ledger, loop, _ = simulate_session(folder, experiments=6)
    assert loop.history() == ledger.history(loop.session_id)
    decided = loop.history()[0][-1].experiment.id
    other = Ledger(ledger.path)
    other.reopen(decided)  # back to pending, written by another connection
    other.close()
    history, pending = loop.history()
    assert (history, pending) == ledger.history(loop.session_id)
    assert decided in {e.id for e in pending} and decided not in {r.experiment.id for r in history}
