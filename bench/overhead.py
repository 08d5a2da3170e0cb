"""Orchestrator overhead: how long a free worker waits, and how fast the read commands are.

1. Dispatch latency: a real 2-worker session (local executor, random researcher)
   on a no-op target whose run prints its metric at once. For every run after the
   first ones, latency = the moment start() returned for it minus the moment the
   session loop learned its worker was free (the poll that reported the previous
   run). It includes proposing, materializing the commit, ledger writes and
   spawning the harness. Goal: p95 <= 50 ms.
2. `labfleet status --json` and `labfleet results --json` on a ledger filled with
   100,000 synthetic runs: wall time of the whole command (a new Python process)
   and of the view function alone. Goal: <= 200 ms.

Run: .venv/bin/python bench/overhead.py [--experiments 60] [--runs 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labfleet import workspace
from labfleet.executors.base import Finished, Job
from labfleet.executors.local import LocalExecutor
from labfleet.ledger import Ledger
from labfleet.session import SessionConfig
from labfleet.session.wiring import open_session
from labfleet.target import load_target
from labfleet.views import results_view, status_view

NOOP_TOML = """\
[target]
name = "noop"
editable = ["train.py"]
setup = ""
run = "python train.py"
metric = "val_bpb"
budget_seconds = 1
timeout_seconds = 30

[knobs]
X = { file = "train.py", low = -1.0, high = 1.0 }
"""
NOOP_TRAIN = 'X = 0.5\nprint("---")\nprint(f"val_bpb: {X * X:.6f}")\n'


class TimedExecutor(LocalExecutor):
    """The local executor, timing free-worker -> started."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.free_at: dict[str, float] = {}
        self.latencies: list[float] = []

    def poll(self) -> list[Finished]:
        finished = super().poll()
        now = time.perf_counter()
        for f in finished:
            self.free_at[f.worker_id] = now
        return finished

    def start(self, job: Job) -> str:
        handle = super().start(job)
        freed = self.free_at.pop(job.worker_id, None)
        if freed is not None:
            self.latencies.append(time.perf_counter() - freed)
        return handle


def dispatch_latency(experiments: int, workers: int = 2) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "noop"
        folder.mkdir()
        (folder / "labfleet.toml").write_text(NOOP_TOML)
        (folder / "train.py").write_text(NOOP_TRAIN)
        workspace.init_repo(folder, "noop target")
        target = load_target(folder)
        config = SessionConfig(researcher="random", workers=workers, max_experiments=experiments)
        executor = TimedExecutor(workers)
        with open_session(target, config, new=True, executor=executor) as wired:
            wired.run()
        return executor.latencies


def fill_ledger(path: Path, runs: int) -> None:
    """One session with ``runs`` experiments, one finished run each (plus a few running)."""
    ledger = Ledger(path)
    sid = ledger.create_session("synthetic", "random", {"workers": 16}, "labfleet/s", "0" * 40, {})
    rng = random.Random(0)
    now = time.time() - runs
    exps, rows = [], []
    for i in range(1, runs + 1):
        metric = 1.0 + rng.random()
        decision = "baseline" if i == 1 else ("kept" if rng.random() < 0.01 else "discarded")
        exps.append((i, sid, None if i == 1 else 1, f"{i:040x}", "", f"experiment {i}", "", json.dumps({"X": metric}),
                     "{}", 0, 30.0, decision, metric, now + i, now + i + 30))
        status = "running" if i > runs - 16 else "done"
        rows.append((i, i, sid, 1, status, f"w{i % 16}", "H100", None, now + i, now + i, None if status == "running" else now + i + 30,
                     metric, json.dumps({"val_bpb": metric, "peak_memory_mb": 1000}), "", None, None))
    with ledger.transaction() as db:
        db.executemany("INSERT INTO experiments VALUES (" + ",".join("?" * 15) + ")", exps)
        db.executemany("INSERT INTO runs VALUES (" + ",".join("?" * 16) + ")", rows)
    ledger.close()


def timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=60)
    parser.add_argument("--runs", type=int, default=100_000)
    args = parser.parse_args()

    lat = sorted(dispatch_latency(args.experiments))
    p50 = statistics.median(lat) * 1000
    p95 = lat[int(0.95 * (len(lat) - 1))] * 1000
    print(f"dispatch latency over {len(lat)} runs (2 workers, no-op target)")
    print(f"  {'p50':<6}{p50:8.1f} ms")
    print(f"  {'p95':<6}{p95:8.1f} ms   goal <= 50 ms  {'ok' if p95 <= 50 else 'MISSED'}")
    print(f"  {'max':<6}{lat[-1] * 1000:8.1f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "big"
        (folder / ".labfleet").mkdir(parents=True)
        (folder / "labfleet.toml").write_text(NOOP_TOML)
        (folder / "train.py").write_text(NOOP_TRAIN)
        fill_ledger(folder / ".labfleet" / "ledger.sqlite", args.runs)
        ledger = Ledger.for_target(folder / ".labfleet")
        print(f"\nread commands on a ledger with {args.runs:,} runs (median of 5)")
        print(f"  {'what':<38}{'time':>10}")
        rows = [
            ("status_view()", timed(lambda: status_view(ledger, folder / ".labfleet"))),
            ("results_view(last=50)", timed(lambda: results_view(ledger, last=50))),
            ("results_view(all)", timed(lambda: results_view(ledger, last=None), repeat=2)),
        ]
        for label, argv in (("labfleet status --json", ["status"]), ("labfleet results --json", ["results"]),
                            ("labfleet results --json --all", ["results", "--all"])):
            cmd = [sys.executable, "-m", "labfleet", *argv, "--json", "-C", str(folder)]
            rows.append((label + " (process)", timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, check=True), repeat=3)))
        for label, seconds in rows:
            print(f"  {label:<38}{seconds * 1000:8.1f} ms")
        print("  goal: status and results --json <= 200 ms")


if __name__ == "__main__":
    main()
