"""Experiments to reach a target val_bpb: waves vs random vs Optuna TPE, real tinygpt on CPU.

Each researcher runs a real session (real training through the harness, two
workers, a small budget) for --experiments experiments, once per seed, on the same
knobs. A session's curve is its best metric after each finished experiment; for a
target, the count is the first experiment at which the curve reaches it (a session
that never does counts as experiments + 1, and is marked). Targets are set from
the runs themselves: fractions of the mean best gain over the baseline, so they
are neither trivial nor out of reach.

Run: .venv/bin/python bench/vs_optuna.py [--experiments 24] [--seeds 0,1] [--budget 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from labfleet import harness, scaffold
from labfleet.executors.local import LocalExecutor
from labfleet.ledger import Ledger
from labfleet.researchers import make_researcher
from labfleet.session import SessionConfig, SessionLoop, start_session
from labfleet.target import load_target

RESEARCHERS = ("waves", "random", "optuna")
FRACTIONS = (0.5, 0.75, 0.9)


def curve(ledger: Ledger, session_id: int) -> tuple[float, list[float]]:
    """The baseline's metric and the best metric after each finished experiment, in finishing order."""
    base = ledger.baseline(session_id)
    assert base is not None and base.metric is not None
    best, points = base.metric, []
    rows = ledger.db.execute(
        "SELECT e.id, MIN(r.metric) AS m, MAX(r.ended_at) AS t FROM experiments e JOIN runs r ON r.experiment_id = e.id"
        " WHERE e.session_id = ? AND e.parent_id IS NOT NULL GROUP BY e.id ORDER BY t",
        (session_id,),
    )
    for row in rows:
        if row["m"] is not None:
            best = min(best, row["m"])
        points.append(best)
    return base.metric, points


def run_one(folder: Path, researcher: str, seed: int, args: argparse.Namespace) -> tuple[float, list[float]]:
    target = load_target(folder)
    ledger = Ledger.for_target(target.state_dir)
    config = SessionConfig(researcher=researcher, workers=args.workers, budget_seconds=args.budget, seed=seed,
                           max_experiments=args.experiments, keep="margin", noise_repeats=0)
    sid = start_session(target, ledger, config)
    loop = SessionLoop(target, ledger, LocalExecutor(args.workers), make_researcher(researcher, seed=seed),
                       sid, config, target.state_dir)
    loop.run()
    return curve(ledger, sid)


def reached(points: list[float], target: float) -> int | None:
    return next((i + 1 for i, best in enumerate(points) if best <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=24)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=float, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--researchers", default=",".join(RESEARCHERS))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.researchers.split(",")

    curves: dict[str, list[tuple[float, list[float]]]] = {n: [] for n in names}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        harness.prepare(folder)
        for seed in seeds:
            for name in names:
                t0 = time.time()
                base, points = run_one(folder, name, seed, args)
                curves[name].append((base, points))
                print(f"  {name:<8} seed {seed}: baseline {base:.4f} -> best {points[-1]:.4f}"
                      f" in {len(points)} experiments ({time.time() - t0:.0f} s)", flush=True)

    baseline = statistics.mean(b for runs in curves.values() for b, _ in runs)
    best = statistics.mean(p[-1] for runs in curves.values() for _, p in runs)
    print(f"\ntinygpt, {args.budget:g} s per run, {args.workers} workers, {args.experiments} experiments,"
          f" seeds {args.seeds}; {time.time() - started:.0f} s in all")
    print(f"mean baseline {baseline:.4f}, mean final best {best:.4f}")
    header = f"{'target val_bpb':<22}" + "".join(f"{n:>12}" for n in names)
    if "waves" in names and "optuna" in names:
        header += f"{'waves/TPE':>12}"
    print(header)
    for fraction in FRACTIONS:
        goal = baseline - fraction * (baseline - best)
        means = {}
        row = f"{goal:.4f} ({fraction:.0%} of gain)  "
        for name in names:
            counts = [reached(p, goal) for _, p in curves[name]]
            missed = sum(c is None for c in counts)
            means[name] = statistics.mean(c if c is not None else args.experiments + 1 for c in counts)
            row += f"{means[name]:>10.1f}{'*' if missed else ' ':<2}"
        if "waves" in means and "optuna" in means:
            row += f"{means['waves'] / means['optuna']:>11.2f}x"
        print(row)
    print("experiments to reach the target, mean over seeds; * = some seed never reached it (counted as"
          f" {args.experiments + 1})")


if __name__ == "__main__":
    main()
