"""Cost per event of the simulator as the fleet grows: 16, 128, 1,000 workers.

A simulated session (the real loop, ledger, researcher and git on a virtual clock,
300 s budgets, the random researcher) for --hours virtual hours per fleet size.
An event is a finished run. Printed: wall seconds, runs, milliseconds per run, and
the wall time a 24-hour session would take at that per-run cost (goal for 1,000
workers x 24 h: <= 60 s on one core, and a flat per-run cost as workers grow).

Run: .venv/bin/python bench/scale.py [--sizes 16,128,1000] [--hours 0.5]
"""

from __future__ import annotations

import argparse
import time

from labfleet.simulate import clone_target, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,128,1000")
    parser.add_argument("--hours", type=float, default=0.5)
    parser.add_argument("--researcher", default="random")
    args = parser.parse_args()
    print(f"{'workers':>8}{'hours':>7}{'runs':>8}{'wall s':>9}{'ms/run':>9}{'24 h est. s':>13}{'util':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.process_time()
        wall = time.time()
        with clone_target(None) as folder:
            sim = simulate(folder, f"H100:{size}", researcher=args.researcher, hours=args.hours, seed=0,
                           budget_seconds=300.0, surrogate={"setup_seconds": 0.0})
        cpu = time.process_time() - started
        per_run = cpu / max(sim.runs, 1)
        est = per_run * sim.runs * 24 / max(args.hours, 1e-9)
        print(f"{size:>8}{args.hours:>7g}{sim.runs:>8}{time.time() - wall:>9.1f}{per_run * 1000:>9.1f}{est:>13.0f}"
              f"{sim.utilization:>8.1%}", flush=True)
    print("ms/run: this process's CPU time per finished run (git runs in child processes and is not counted;")
    print("wall s includes it). goal: 1,000 workers x 24 h <= 60 s on one core, flat ms/run as workers grow")


if __name__ == "__main__":
    main()
