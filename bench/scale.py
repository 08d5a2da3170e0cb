"""Cost per event of the simulator as the fleet grows: 16, 128, 1,000 workers.

A simulated session (the real loop, ledger, researcher and git on a virtual clock,
300 s budgets, the random researcher, a throw-away clone: `labfleet simulate` without
--save) for --hours virtual hours per fleet size, each in a fresh process. An event is
a finished run. Printed per size: wall seconds, events, experiments, wall and CPU
microseconds per event (CPU: this process and its git children, the figure for "one
core" on a shared machine), and the 24-hour wall time at that per-event cost.

Goal: 1,000 workers x 24 h in <= 60 s on one core, and a flat cost per event as
workers grow. --before DIR runs the same sizes on another checkout's src/ (e.g. a
`git archive` of main) beside this one, in the same run.

Run: .venv/bin/python bench/scale.py [--sizes 16,128,1000] [--hours 24] [--before DIR --before-hours 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def one(size: int, hours: float, researcher: str) -> dict[str, float]:
    """One session in this process: the figures as a dict."""
    import inspect

    from labfleet.simulate import clone_target, simulate

    throwaway = {"keep_files": False} if "keep_files" in inspect.signature(simulate).parameters else {}
    before = os.times()
    wall = time.perf_counter()
    with clone_target(None) as folder:
        sim = simulate(folder, f"H100:{size}", researcher=researcher, hours=hours, seed=0,
                       budget_seconds=300.0, surrogate={"setup_seconds": 0.0}, **throwaway)
        wall = time.perf_counter() - wall  # the clone's removal not counted
    after = os.times()
    cpu = sum(after[i] - before[i] for i in range(4))  # user + system, this process and its children
    return {"workers": size, "hours": hours, "wall": wall, "cpu": cpu, "events": sim.runs,
            "experiments": sim.experiments, "utilization": sim.utilization}


def measure(src: Path | None, size: int, hours: float, researcher: str) -> dict[str, float]:
    """``one`` in a fresh interpreter (on ``src`` when given), so sizes do not share caches."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, __file__, "--one", str(size), "--hours", str(hours),
                          "--researcher", researcher], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"size {size} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(label: str, m: dict[str, float]) -> str:
    per = m["wall"] / max(m["events"], 1)
    cpu = m["cpu"] / max(m["events"], 1)
    est = per * m["events"] * 24 / max(m["hours"], 1e-9)
    return (f"{label:<7}{int(m['workers']):>8}{m['hours']:>7g}{m['wall']:>9.1f}{int(m['events']):>9}"
            f"{int(m['experiments']):>9}{per * 1e6:>10.0f}{cpu * 1e6:>10.0f}{est:>11.0f}{m['utilization']:>7.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,128,1000")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--researcher", default="random")
    parser.add_argument("--before", type=Path, help="a checkout whose src/ is measured beside this one")
    parser.add_argument("--before-hours", type=float, default=0.5, help="virtual hours for the --before rows")
    parser.add_argument("--before-sizes", default="16,128")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.hours, args.researcher)))
        return
    print(f"{'code':<7}{'workers':>8}{'hours':>7}{'wall s':>9}{'events':>9}{'exps':>9}{'us/event':>10}"
          f"{'cpu us/ev':>10}{'24 h s':>11}{'util':>7}", flush=True)
    here = Path(__file__).resolve().parents[1] / "src"
    sizes = [int(s) for s in args.sizes.split(",")]
    before_sizes = [int(s) for s in args.before_sizes.split(",")] if args.before else []
    for size in sizes:
        if size in before_sizes:
            assert args.before is not None
            print(row("before", measure(args.before / "src", size, args.before_hours, args.researcher)), flush=True)
            if args.before_hours != args.hours:
                print(row("after", measure(here, size, args.before_hours, args.researcher)), flush=True)
        print(row("after" if args.before else "", measure(here, size, args.hours, args.researcher)), flush=True)
    print("us/event: wall time per finished run; cpu us/ev: CPU time (this process and its git children) per run;")
    print("24 h s: the wall time of a 24-hour session at that per-event cost. Goal: 1,000 workers x 24 h <= 60 s")
    print("on one core, flat us/event as workers grow.")


if __name__ == "__main__":
    main()
