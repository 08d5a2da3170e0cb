"""Orchestrator overhead: how long a free worker waits, and how fast the read commands are.

1. Dispatch latency: a real 2-worker session (local executor, random researcher)
   on a no-op target whose run prints its metric at once. For every run after the
   first ones, latency = the moment start() returned for it minus the moment the
   session loop learned its worker was free (the poll that reported the previous
   run). It includes proposing, materializing the commit, ledger writes and
   spawning the harness. Goal: p95 <= 50 ms.
2. `labfleet --help`, `labfleet status --json` and `labfleet results --json` as whole
   commands (a new Python process each), on ledgers filled with 100 and 100,000
   synthetic runs (16 priced workers, 1,000 model-call events), and the view functions
   alone. Goal: status --json on 100k runs <= 200 ms.

Whole commands run with their bytecode cached (as after ``pip install``; this machine's shell
sets PYTHONDONTWRITEBYTECODE, under which every start recompiles labfleet's sources: about
100 ms of the earlier figures). Every figure is measured for an earlier commit (``--before REF``, default 2fb60fb, the
commit before the ledger/ package; its ``src`` from ``git archive``, on ``PYTHONPATH``,
with its own freshly built ledgers) and for this tree, in alternating rounds, and
printed side by side (medians over the rounds). ``--before none``: this tree only.

Run: .venv/bin/python bench/overhead.py [--experiments 60] [--runs 100000] [--before 2fb60fb] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
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


def dispatch_latency(experiments: int, workers: int = 2, earlier_runs: int = 0) -> list[float]:
    """Free-worker -> started latencies of a new session; ``earlier_runs``: the ledger already holds
    a session of that many runs (what a long-lived target's ledger looks like)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "noop"
        folder.mkdir()
        (folder / "labfleet.toml").write_text(NOOP_TOML)
        (folder / "train.py").write_text(NOOP_TRAIN)
        workspace.init_repo(folder, "noop target")
        if earlier_runs:
            (folder / ".labfleet").mkdir()
            fill_ledger(folder / ".labfleet" / "ledger.sqlite", earlier_runs)
        target = load_target(folder)
        config = SessionConfig(researcher="random", workers=workers, max_experiments=experiments)
        executor = TimedExecutor(workers)
        with open_session(target, config, new=True, executor=executor) as wired:
            wired.run()
        return executor.latencies


def fill_ledger(path: Path, runs: int) -> None:
    """One session with ``runs`` experiments, one finished run each (plus a few running), 16 priced
    workers and 1,000 model-call events. Columns are named, so any schema version takes it."""
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
    events = [(sid, now + i, "llm_call", json.dumps({"ok": True, "input_tokens": 900, "output_tokens": 300, "usd": 0.01}))
              for i in range(1000)]
    with ledger.transaction() as db:
        db.executemany("INSERT INTO experiments (id, session_id, parent_id, commit_sha, patch, description, hypothesis,"
                       " knobs, tags, seed, budget_seconds, decision, metric, created_at, decided_at)"
                       " VALUES (" + ",".join("?" * 15) + ")", exps)
        db.executemany("INSERT INTO runs (id, experiment_id, session_id, attempt, status, worker, hardware, handle,"
                       " queued_at, started_at, ended_at, metric, figures, reason, run_dir, log_path)"
                       " VALUES (" + ",".join("?" * 16) + ")", rows)
        db.executemany("INSERT INTO workers VALUES (?, ?, 'H100', 'cuda', 1, 2.5)", [(sid, f"w{i}") for i in range(16)])
        db.executemany("INSERT INTO events (session_id, at, kind, data) VALUES (?, ?, ?, ?)", events)
    ledger.close()


def timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_folder(root: Path, runs: int) -> Path:
    folder = root / f"big{runs}"
    (folder / ".labfleet").mkdir(parents=True)
    (folder / "labfleet.toml").write_text(NOOP_TOML)
    (folder / "train.py").write_text(NOOP_TRAIN)
    fill_ledger(folder / ".labfleet" / "ledger.sqlite", runs)
    return folder


def command(argv: list[str], repeat: int = 5) -> float:
    """A whole command, bytecode cached as after `pip install` (one warm-up run writes it)."""
    cmd = [sys.executable, "-m", "labfleet", *argv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(cmd, capture_output=True, check=True, env=env)
    return timed(lambda: subprocess.run(cmd, capture_output=True, check=True, env=env), repeat=repeat)


def measure(experiments: int, runs: int) -> dict[str, float]:
    """Every figure, in ms, for the labfleet this process imports."""
    out: dict[str, float] = {}
    for earlier, label in ((0, ""), (runs, f" ({runs:,}-run ledger)")):
        lat = sorted(dispatch_latency(experiments, earlier_runs=earlier))
        out[f"dispatch p50{label}"] = statistics.median(lat) * 1000
        out[f"dispatch p95{label}"] = lat[int(0.95 * (len(lat) - 1))] * 1000
        out[f"dispatch max{label}"] = lat[-1] * 1000
    out["labfleet --help"] = command(["--help"]) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100, runs):
            folder = make_folder(Path(tmp), n)
            ledger = Ledger.for_target(folder / ".labfleet")
            out[f"status_view() {n:,} runs"] = timed(lambda ledger=ledger, folder=folder: status_view(ledger, folder / ".labfleet")) * 1000
            out[f"results_view(last=50) {n:,} runs"] = timed(lambda ledger=ledger: results_view(ledger, last=50)) * 1000
            ledger.close()
            out[f"labfleet status --json {n:,} runs"] = command(["status", "--json", "-C", str(folder)]) * 1000
            out[f"labfleet results --json {n:,} runs"] = command(["results", "--json", "-C", str(folder)], 3) * 1000
    return out


def child(src: Path, args: argparse.Namespace, extra_path: str = "") -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra_path, str(src)) if p)}
    proc = subprocess.run([sys.executable, __file__, "--measure", "--experiments", str(args.experiments),
                           "--runs", str(args.runs)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"measuring {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=60)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--before", default="2fb60fb", help="the commit to compare with ('none': this tree only)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree (with --before)")
    parser.add_argument("--before-path", default="",
                        help="folders put first on the before tree's PYTHONPATH: its own pinned packages, e.g."
                             " `pip install --no-deps --target /tmp/typer029 typer==0.29.2`")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child's mode: JSON out
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.experiments, args.runs)))
        return
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": here / "src"}
        if args.before != "none":
            old = Path(tmp) / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(here), "archive", args.before, "src"], capture_output=True,
                                     check=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            trees = {f"{args.before}": old / "src", **trees}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                results[name].append(child(src, args, args.before_path if name != "this tree" else ""))
    medians = {name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for name, rounds in results.items()}
    names = list(trees)
    print(f"labfleet overhead, ms (median of {len(results[names[0]])} round(s); whole commands are new processes;"
          f" dispatch: {args.experiments} experiments on 2 local workers)")
    header = f"  {'what':<40}" + "".join(f"{n:>10}" for n in names) + ("     ratio" if len(names) == 2 else "")
    print(header + ("" if len(names) < 2 else "  (after / before)"))
    for key in medians[names[0]]:
        values = [medians[n][key] for n in names]
        ratio = f"{values[1] / values[0]:>9.2f}x" if len(values) == 2 and values[0] else ""
        print(f"  {key:<40}" + "".join(f"{v:>10.1f}" for v in values) + ratio)
    print("  goals: dispatch p95 <= 50 ms; status --json on 100k runs <= 200 ms")


if __name__ == "__main__":
    main()
