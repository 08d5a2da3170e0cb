"""The executor conformance suite: what every executor must do, checked with real runs.

Use it from a test module of an executor (local, ray, skypilot, simulated)::

    from labfleet.executors import conformance

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        check(lambda workers: MyExecutor(workers), tmp_path)

Each check builds a tiny target (a git repo whose ``train.py`` sleeps for
``SLEEP`` seconds, then prints a metric), so the suite needs no torch and takes a
few seconds per check. An executor that cannot run real processes (the simulator)
passes ``target_factory`` of its own.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from labfleet import workspace
from labfleet.executors.base import Executor, ExecutorError, Finished, Job
from labfleet.harness import Outcome, RunRequest

ExecutorFactory = Callable[[int], Executor]

TRAIN = """\
import os, sys, time
SLEEP = {sleep}
CRASH = {crash}
time.sleep(SLEEP)
if CRASH:
    sys.exit("crashed on purpose")
print("---")
print(f"val_bpb: {{1.0 + int(os.environ['LABFLEET_SEED']) / 100:.4f}}")
"""

TOML = """\
[target]
name = "conformance"
editable = ["train.py"]
setup = ""
run = "python train.py"
metric = "val_bpb"
budget_seconds = 1
timeout_seconds = 20
"""


def make_target(folder: Path) -> Path:
    """A committed target whose runs sleep; experiments vary SLEEP and CRASH by patch."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labfleet.toml").write_text(TOML)
    (folder / "train.py").write_text(TRAIN.format(sleep=0.2, crash=False))
    workspace.init_repo(folder, "conformance target")
    return folder


def _version(folder: Path, sleep: float = 0.2, crash: bool = False) -> str:
    """A commit of the target with other SLEEP/CRASH values."""
    old = TRAIN.format(sleep=0.2, crash=False)
    new = TRAIN.format(sleep=sleep, crash=crash)
    if old == new:
        return workspace.resolve(folder)
    from labfleet.target import unified_diff

    return workspace.commit_patch(folder, "HEAD", unified_diff("train.py", old, new), "variant", ["train.py"])


def _job(folder: Path, tmp: Path, run_id: int, worker: str, *, seed: int = 0, **variant: float | bool) -> Job:
    request = RunRequest(
        target_dir=folder, run_dir=tmp / "runs" / f"r{run_id}", commit=_version(folder, **variant),  # type: ignore[arg-type]
        seed=seed, cache_root=tmp / "cache",
    )
    return Job(run_id=run_id, worker_id=worker, request=request)


def _wait(executor: Executor, count: int, timeout: float = 60.0) -> list[Finished]:
    """Poll until ``count`` jobs finished; fail if more arrive than expected."""
    finished: list[Finished] = []
    deadline = time.monotonic() + timeout
    while len(finished) < count:
        assert time.monotonic() < deadline, f"only {len(finished)} of {count} jobs finished in {timeout:g} s"
        finished += executor.poll()
        executor.wait(0.02)
    executor.wait(0.3)
    finished += executor.poll()
    assert len(finished) == count, f"poll reported {len(finished)} jobs, expected {count}"
    return finished


def check_workers(factory: ExecutorFactory, tmp: Path) -> None:
    """Workers have unique ids and a hardware class.

    Two workers, the most any check asks for: a real cluster fixture (two Ray nodes)
    may have no more.
    """
    executor = factory(2)
    try:
        ids = [w.id for w in executor.workers()]
        assert len(ids) == 2 and len(set(ids)) == 2
        assert all(w.hardware for w in executor.workers())
    finally:
        executor.close()


def check_runs_and_reports_once(factory: ExecutorFactory, tmp: Path) -> None:
    """Jobs on every worker run at once; each result is reported exactly once."""
    folder = make_target(tmp / "target")
    executor = factory(2)
    try:
        workers = [w.id for w in executor.workers()]
        jobs = [_job(folder, tmp, i + 1, w, seed=i + 1, sleep=1.0) for i, w in enumerate(workers)]
        for job in jobs:
            executor.start(job)
        assert executor.poll() == [], "start must not wait for the run"
        assert sorted(executor.running()) == [1, 2]
        finished = _wait(executor, 2)
        by_run = {f.run_id: f for f in finished}
        assert sorted(by_run) == [1, 2]
        for run_id, f in by_run.items():
            assert f.result is not None and f.result.outcome == Outcome.OK, f
            assert abs((f.result.metric or 0) - (1.0 + run_id / 100)) < 1e-9
            assert f.worker_id == workers[run_id - 1]
        assert executor.running() == []
        assert executor.poll() == []
    finally:
        executor.close()


def check_busy_worker_refused(factory: ExecutorFactory, tmp: Path) -> None:
    """One job per worker at a time."""
    folder = make_target(tmp / "target")
    executor = factory(1)
    try:
        worker = executor.workers()[0].id
        executor.start(_job(folder, tmp, 1, worker, sleep=1.0))
        try:
            executor.start(_job(folder, tmp, 2, worker))
        except ExecutorError:
            pass
        else:
            raise AssertionError("start on a busy worker must raise ExecutorError")
        _wait(executor, 1)
    finally:
        executor.close()


def check_crash_is_a_result_not_a_loss(factory: ExecutorFactory, tmp: Path) -> None:
    """A run that crashes is the experiment's outcome, reported with its result."""
    folder = make_target(tmp / "target")
    executor = factory(1)
    try:
        executor.start(_job(folder, tmp, 1, executor.workers()[0].id, crash=True))
        [f] = _wait(executor, 1)
        assert f.result is not None and f.result.outcome == Outcome.CRASHED
        assert "crashed on purpose" in f.result.log_tail
    finally:
        executor.close()


def check_cancel(factory: ExecutorFactory, tmp: Path) -> None:
    """A cancelled job is reported lost, and its training process is gone."""
    folder = make_target(tmp / "target")
    executor = factory(1)
    try:
        executor.start(_job(folder, tmp, 1, executor.workers()[0].id, sleep=30.0))
        executor.wait(1.0)
        executor.cancel(1)
        [f] = _wait(executor, 1, timeout=15)
        assert f.result is None and f.reason == "cancelled"
        leftover = subprocess.run(["pgrep", "-f", str(tmp / "runs" / "r1")], capture_output=True, text=True)
        assert leftover.stdout.strip() == "", f"processes survived the cancel: {leftover.stdout}"
    finally:
        executor.close()


def check_adopt_after_orchestrator_death(factory: ExecutorFactory, tmp: Path) -> None:
    """A new executor adopts a job an earlier one started, and collects its result."""
    folder = make_target(tmp / "target")
    first = factory(1)
    worker = first.workers()[0].id
    job = _job(folder, tmp, 1, worker, seed=7, sleep=1.5)
    handle = first.start(job)
    del first  # the orchestrator "dies": nobody closes or polls the first executor
    second = factory(1)
    try:
        second.adopt(job, handle)
        [f] = _wait(second, 1)
        assert f.result is not None and f.result.outcome == Outcome.OK, f
        assert abs((f.result.metric or 0) - 1.07) < 1e-9
        # adopting a job that already finished collects its result at once
        third = factory(1)
        third.adopt(job, handle)
        [again] = _wait(third, 1, timeout=5)
        assert again.result is not None and again.result.metric == f.result.metric
        third.close()
        # a job whose process is gone without a result is reported lost
        ghost = _job(folder, tmp, 2, worker)
        fourth = factory(1)
        fourth.adopt(ghost, "999999999")
        [lost] = _wait(fourth, 1, timeout=5)
        assert lost.result is None and lost.reason
        fourth.close()
    finally:
        second.close()


CHECKS = [
    check_workers,
    check_runs_and_reports_once,
    check_busy_worker_refused,
    check_crash_is_a_result_not_a_loss,
    check_cancel,
    check_adopt_after_orchestrator_death,
]
