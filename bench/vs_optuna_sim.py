"""The simulated twin of bench/vs_optuna.py: waves vs random vs Optuna TPE, on the simulator.

The same question (experiments to reach a target metric) and the same scoring as
vs_optuna.py, but each session runs on the simulated executor instead of real
training, so many seeds take seconds: --surrogate hand-made (the seeded bowl) or
measured (fitted to real tinygpt runs on CPU, labfleet.planning; needs the plan
extra). A session's curve is the noise-free value of its champion after each
finished experiment, so noise luck does not count as progress.

Run: .venv/bin/python bench/vs_optuna_sim.py [--experiments 24] [--seeds 0,1,2,3,4] [--surrogate measured]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from labfleet.ledger import Ledger
from labfleet.simulate import clone_target, simulate
from labfleet.target import load_target

RESEARCHERS = ("waves", "random", "optuna")
FRACTIONS = (0.5, 0.75, 0.9)
BUDGET = 300.0


def curve(folder: Path, researcher: str, seed: int, args: argparse.Namespace) -> tuple[float, list[float]]:
    sim = simulate(folder, args.fleet, researcher=researcher, hours=None, seed=seed, budget_seconds=BUDGET,
                   max_experiments=args.experiments, keep="margin", noise_repeats=0,
                   surrogate="measured" if args.surrogate == "measured" else None)
    assert sim.model is not None
    base = sim.model.expected(sim.champions[0][2], 1.0, BUDGET)
    # the champion's noise-free value after each decided experiment, in deciding order
    ledger = Ledger.for_target(load_target(folder, check_files=False).state_dir)
    decided = list(ledger.db.execute(
        "SELECT decision, knobs FROM experiments WHERE session_id = ? AND parent_id IS NOT NULL"
        " AND decided_at IS NOT NULL ORDER BY decided_at, id", (sim.session_id,)))
    best, points = base, []
    for row in decided:
        if row["decision"] == "kept":
            best = min(best, sim.model.expected(json.loads(row["knobs"]), 1.0, BUDGET))
        points.append(best)
    return base, points


def reached(points: list[float], target: float) -> int | None:
    return next((i + 1 for i, best in enumerate(points) if best <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=24)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--fleet", default="H100:2")
    parser.add_argument("--researchers", default=",".join(RESEARCHERS))
    parser.add_argument("--surrogate", choices=("hand-made", "measured"), default="hand-made")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.researchers.split(",")
    curves: dict[str, list[tuple[float, list[float]]]] = {n: [] for n in names}
    started = time.time()
    for seed in seeds:
        for name in names:
            with clone_target(None) as folder:
                curves[name].append(curve(folder, name, seed, args))
    baseline = statistics.mean(b for runs in curves.values() for b, _ in runs)
    best = statistics.mean(p[-1] for runs in curves.values() for _, p in runs if p)
    print(f"{args.surrogate} surrogate, {args.fleet}, {args.experiments} experiments, seeds {args.seeds};"
          f" {time.time() - started:.0f} s in all")
    print(f"mean baseline {baseline:.4f}, mean final best {best:.4f} (noise-free)")
    print(f"{'target':<22}" + "".join(f"{n:>12}" for n in names))
    for fraction in FRACTIONS:
        goal = baseline - fraction * (baseline - best)
        row = f"{goal:.4f} ({fraction:.0%} of gain)  "
        for name in names:
            counts = [reached(p, goal) for _, p in curves[name]]
            missed = sum(c is None for c in counts)
            mean = statistics.mean(c if c is not None else args.experiments + 1 for c in counts)
            row += f"{mean:>10.1f}{'*' if missed else ' ':<2}"
        print(row)
    print(f"experiments to reach the target, mean over seeds; * = some seed never reached it (counted as"
          f" {args.experiments + 1})")


if __name__ == "__main__":
    main()
