"""The harness against real processes and real git: every outcome, nothing else harmed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import pytest

from labfleet import harness
from labfleet.harness import Outcome, RunRequest, classify, parse_block, run_experiment
from labfleet.target import parse_config
from tests.conftest import git, processes_with


def run(target: Path, tmp_path: Path, name: str = "run", **kwargs) -> harness.RunResult:
    return run_experiment(RunRequest(target_dir=target, run_dir=tmp_path / "runs" / name, **kwargs))


def snapshot(target: Path) -> tuple[str, str, dict[str, str]]:
    """HEAD, porcelain status and file hashes of a target: must not change after any run."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in target.iterdir() if p.is_file()}
    return git(target, "rev-parse", "HEAD").strip(), git(target, "status", "--porcelain"), files


def test_ok_run_passes_environment_and_records_everything(target_factory, tmp_path):
    target = target_factory()
    before = snapshot(target)
    result = run(target, tmp_path, seed=7, budget_seconds=2.5, threads=3)
    assert result.outcome == Outcome.OK, result.reason
    assert result.metric == pytest.approx(1.5 + 3e-3 + 0.007)
    assert result.figures["budget"] == 2.5
    assert result.figures["threads"] == 3
    assert result.figures["device"] == "cpu"
    assert result.figures["key_visible"] == 0  # the launcher removed the key before train.py ran
    assert result.figures["data"] == "data"  # setup output reached the run
    assert result.commit == before[0]
    assert set(result.frozen_hashes) == {"evalkit.py", "launch.py", "prepare.py"}
    # the record on disk is the same result, and the log holds the output
    on_disk = harness.read_result(tmp_path / "runs" / "run")
    assert on_disk is not None and on_disk.to_json() == result.to_json()
    assert "val_bpb:" in Path(result.log_path).read_text()
    assert snapshot(target) == before


def test_setup_runs_once_per_cache_key(target_factory, tmp_path, _isolated_cache):
    target = target_factory()
    first = run(target, tmp_path, "a")
    second = run(target, tmp_path, "b")
    assert first.outcome == second.outcome == Outcome.OK
    assert not first.setup_cached and second.setup_cached
    counters = list(_isolated_cache.glob("*/setup-count"))
    assert [c.read_text() for c in counters] == ["1"]


def test_crash_keeps_the_log_tail(target_factory, tmp_path):
    target = target_factory('print("starting")\nraise RuntimeError("boom at step 3")\n')
    result = run(target, tmp_path)
    assert result.outcome == Outcome.CRASHED
    assert result.exit_code == 1
    assert "boom at step 3" in result.log_tail
    assert "exited with code 1" in result.reason


def test_hang_is_killed_with_its_whole_process_group(target_factory, tmp_path):
    train = """\
    import subprocess, time, pathlib
    child = subprocess.Popen(["sleep", "300.%s"])
    pathlib.Path("child.pid").write_text(str(child.pid))
    time.sleep(300)
    """
    token = f"{os.getpid()}{time.monotonic_ns() % 100000}"  # a pid inside a box means nothing outside it
    target = target_factory(train % token, budget=0.5, timeout=1.5)
    started = time.monotonic()
    result = run(target, tmp_path)
    assert result.outcome == Outcome.TIMEOUT
    assert "hard timeout" in result.reason
    assert time.monotonic() - started < 15
    assert (tmp_path / "runs" / "run" / "src" / "child.pid").is_file()  # the child did start
    for _ in range(50):  # the kill is synchronous, but allow the kernel to reap
        if not processes_with(f"sleep 300.{token}"):
            break
        time.sleep(0.05)
    assert not processes_with(f"sleep 300.{token}")


def test_larger_budget_extends_the_hard_timeout(target_factory, tmp_path):
    target = target_factory("import time, evalkit\ntime.sleep(2.5)\nevalkit.report(1.0)\n", budget=0.5, timeout=2)
    assert run(target, tmp_path, "short").outcome == Outcome.TIMEOUT
    assert run(target, tmp_path, "long", budget_seconds=2.0).outcome == Outcome.OK


def test_no_metric(target_factory, tmp_path):
    result = run(target_factory('print("trained, but forgot to report")\n'), tmp_path)
    assert result.outcome == Outcome.NO_METRIC
    assert "val_bpb" in result.reason


@pytest.mark.parametrize(
    "train",
    ['import evalkit\nevalkit.report(float("nan"))\n', 'import sys\nprint("loss nan")\nprint("FAIL")\nsys.exit(1)\n'],
    ids=["nan-metric", "fail-exit"],
)
def test_nan(target_factory, tmp_path, train):
    result = run(target_factory(train), tmp_path)
    assert result.outcome == Outcome.NAN
    assert json.loads(json.dumps(result.to_json()))["metric"] is None  # valid JSON, no NaN


def test_run_that_edits_a_frozen_file_is_rejected_and_harms_nothing(target_factory, tmp_path):
    train = 'import evalkit\nopen("evalkit.py", "a").write("# tampered\\n")\nevalkit.report(0.5)\n'
    target = target_factory(train)
    before = snapshot(target)
    result = run(target, tmp_path)
    assert result.outcome == Outcome.REJECTED
    assert "evalkit.py was modified during the run" in result.reason
    assert snapshot(target) == before


@pytest.mark.parametrize(
    "train, why",
    [
        ('print("---")\nprint("val_bpb: 0.0001")\n', "missing signature"),
        ('import evalkit\nevalkit.report(1.2)\nprint("val_bpb: 0.0001")\n', "invalid signature"),
        ('import evalkit\nprint("val_bpb: 0.0001")\nevalkit.report(1.2)\n', "printed 2 times"),
        ('print("val_bpb: 0.0001")\n', "outside the frozen summary"),
    ],
    ids=["forged-block", "forged-after", "forged-before", "forged-no-block"],
)
def test_forged_metric_is_suspect(target_factory, tmp_path, train, why):
    result = run(target_factory(train), tmp_path)
    assert result.outcome == Outcome.SUSPECT
    assert why in result.reason


def test_unsigned_target_takes_the_printed_metric(target_factory, tmp_path):
    target = target_factory('print("---")\nprint("val_bpb:   0.9970")\nprint("num_steps: 12")\n', signed=False)
    result = run(target, tmp_path)
    assert result.outcome == Outcome.OK
    assert result.metric == pytest.approx(0.997)
    assert result.figures["num_steps"] == 12


def test_patch_is_applied_as_a_new_commit(target_factory, tmp_path):
    target = target_factory()
    before = snapshot(target)
    patch = """\
diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -4,3 +4,3 @@
 # hyperparameters
-LEARNING_RATE = 3e-3  # step size
+LEARNING_RATE = 1e-2  # step size
 N_LAYER = 2
"""
    result = run(target, tmp_path, patch=patch)
    assert result.outcome == Outcome.OK, result.reason
    assert result.metric == pytest.approx(1.51)
    assert result.commit != before[0]
    assert git(target, "rev-parse", f"{result.commit}^").strip() == before[0]
    assert "1e-2" in git(target, "show", f"{result.commit}:train.py")
    assert result.flags == []
    assert snapshot(target) == before  # work tree, index and HEAD untouched


@pytest.mark.parametrize(
    "patch, why",
    [
        ("diff --git a/evalkit.py b/evalkit.py\n--- a/evalkit.py\n+++ b/evalkit.py\n@@ -1 +1 @@\n"
         '-"""Frozen: prints the result block and signs the metric line."""\n+"""hacked"""\n',
         "evalkit.py, which is not editable"),
        ("diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n"
         "-import nothing_like_this\n+import os\n import evalkit\n", "train.py: patch does not apply"),
        ("not a patch at all\n", "No valid patches in input"),
        ("\n", "the patch is empty"),
    ],
    ids=["frozen-file", "does-not-apply", "garbage", "empty"],
)
def test_bad_patch_is_rejected(target_factory, tmp_path, patch, why):
    target = target_factory()
    before = snapshot(target)
    result = run(target, tmp_path, patch=patch)
    assert result.outcome == Outcome.REJECTED
    assert why in result.reason
    assert result.exit_code is None  # nothing ran
    assert snapshot(target) == before


def test_patch_mentioning_the_metric_is_flagged(target_factory, tmp_path):
    target = target_factory()
    patch = (
        "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,3 @@\n"
        " LEARNING_RATE = 3e-3  # step size\n+# improve val_bpb\n N_LAYER = 2\n"
    )
    result = run(target, tmp_path, patch=patch)
    assert result.outcome == Outcome.OK
    assert result.flags == ["the patch mentions the metric name 'val_bpb'"]


def test_frozen_hash_mismatch_is_rejected_before_running(target_factory, tmp_path):
    target = target_factory()
    result = run(target, tmp_path, frozen_hashes={"evalkit.py": "0" * 64, "launch.py": "x", "prepare.py": "y"})
    assert result.outcome == Outcome.REJECTED
    assert "differs from its recorded hash" in result.reason
    assert result.exit_code is None


def test_failing_setup_is_not_the_experiments_fault(target_factory, tmp_path):
    target = target_factory()
    (target / "prepare.py").write_text("raise SystemExit('no data here')\n")
    git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "break setup")
    result = run(target, tmp_path)
    assert result.outcome == Outcome.SETUP_FAILED
    assert "no data here" in result.reason


def test_run_dir_must_be_fresh(target_factory, tmp_path):
    target = target_factory()
    run_dir = tmp_path / "used"
    run_dir.mkdir()
    (run_dir / "x").write_text("x")
    with pytest.raises(harness.HarnessError, match="not empty"):
        run_experiment(RunRequest(target_dir=target, run_dir=run_dir))


def test_request_file_entry_point(target_factory, tmp_path):
    """`python -m labfleet.harness request.json` is how executors start a run."""
    import subprocess
    import sys

    target = target_factory()
    request = RunRequest(target_dir=target, run_dir=tmp_path / "r", seed=3)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request.to_json()))
    assert RunRequest.from_json(json.loads(path.read_text())) == request
    proc = subprocess.run([sys.executable, "-m", "labfleet.harness", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "ok"
    assert harness.read_result(tmp_path / "r").metric == pytest.approx(1.506)


# ---------------------------------------------------------------- parsing, no processes

SPEC = parse_config(
    '[target]\nname="t"\neditable=["train.py"]\nrun="x"\nmetric="val_bpb"\nbudget_seconds=1\ntimeout_seconds=2\n'
).target


def test_parse_block_takes_the_last_block():
    out = "---\nval_bpb: 9\nnoise\n---\nval_bpb:     1.25\ntraining_seconds: 30.1\nnot a pair\n"
    assert parse_block(out) == {"val_bpb": "1.25", "training_seconds": "30.1"}
    assert parse_block("no block") == {}


def test_classify_without_signing():
    outcome, _, metric, figures = classify("---\nval_bpb: 1.5\nnum_steps: 10\n", 0, SPEC, None)
    assert (outcome, metric, figures["num_steps"]) == (Outcome.OK, 1.5, 10.0)
    assert classify("---\nval_bpb: inf\n", 0, SPEC, None)[0] == Outcome.NAN
    assert classify("---\nval_bpb: abc\n", 0, SPEC, None)[0] == Outcome.NO_METRIC
    assert classify("---\nval_bpb: 1.5\n", 3, SPEC, None)[0] == Outcome.CRASHED


def test_classify_checks_the_signature():
    key = "ab" * 32
    good = f"---\nval_bpb: 1.500000\nsignature: {harness.sign(key, 'val_bpb', '1.500000')}\n"
    assert classify(good, 0, SPEC, key)[:1] == (Outcome.OK,)
    other_key = "cd" * 32
    assert classify(good, 0, SPEC, other_key)[0] == Outcome.SUSPECT
    tampered = good.replace("1.500000", "1.400000", 1)
    assert classify(tampered, 0, SPEC, key)[0] == Outcome.SUSPECT
    assert math.isclose(classify(good, 0, SPEC, key)[2], 1.5)
