"""Fleet utilization of a real session: busy run time / (workers x wall time).

A real 2-worker session on the bundled tinygpt target (10 s budget, >= 12
experiments, local executor, 1 thread per worker). A worker is busy from the
moment its run started (the harness process was spawned) until the run ended;
wall time is from the session's first start to its last end. What is not busy is
the orchestrator's share: noticing a finished run, deciding, proposing,
materializing the next version, and starting its harness. Goal: >= 90%.

Run: .venv/bin/python bench/utilization.py [--experiments 12] [--budget 10] [--researcher random]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from labfleet import harness, scaffold
from labfleet.session import SessionConfig
from labfleet.session.wiring import open_session
from labfleet.target import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=12)
    parser.add_argument("--budget", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--researcher", default="random")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        harness.prepare(folder)  # setup once per host, as in real use (cached)
        target = load_target(folder)
        config = SessionConfig(researcher=args.researcher, workers=args.workers, budget_seconds=args.budget,
                               max_experiments=args.experiments)
        with open_session(target, config, new=True) as wired:
            started = time.time()
            wired.run()
            runs = [r for r in wired.ledger.runs(wired.session_id) if r.started_at and r.ended_at]
        first = min(r.started_at for r in runs)  # type: ignore[type-var]
        last = max(r.ended_at for r in runs)  # type: ignore[type-var]
        busy = sum(r.ended_at - r.started_at for r in runs)  # type: ignore[operator]
        wall = last - first
        utilization = busy / (args.workers * wall)
        train = sum(float(r.figures.get("training_seconds", 0)) for r in runs)
        print(f"session: {len(runs)} runs ({args.experiments} experiments + baseline), {args.workers} workers, "
              f"{args.budget:g} s budget, {args.researcher} researcher, {time.time() - started:.0f} s in all")
        print(f"  {'busy run time':<34}{busy:9.1f} s")
        print(f"  {'workers x wall':<34}{args.workers * wall:9.1f} s")
        print(f"  {'utilization (busy / workers x wall)':<34}{utilization:9.1%}   goal >= 90%  "
              f"{'ok' if utilization >= 0.9 else 'MISSED'}")
        print(f"  {'training time / workers x wall':<34}{train / (args.workers * wall):9.1%}   "
              "(the rest of a run: start-up, evaluation)")


if __name__ == "__main__":
    main()
