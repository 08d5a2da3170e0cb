"""Fleet speedup on the simulator: 16 workers with waves + tiers against one worker with greedy.

The seed run's claim, measured: an agent on 13 H100 + 3 H200 reached the best that
one GPU found sequentially about 9x sooner (8 h vs 72 h). Here, on the same
surrogate objective and seeds (labfleet's simulated executor: the real scheduler,
ledger and researchers on a virtual clock, 5-minute budgets, per-run overhead,
setup, crashes and hangs):

- sequential: 1 x H100, the greedy researcher (autoresearch's loop), for --seq-hours;
  its best is the target, and the time it first reached that best is t_seq;
- fleet: H100:13 + H200:3, the waves researcher, screening on H100 and validating
  winners on H200, for --fleet-hours; t_fleet is when its champion first reached the
  target.

"Reached" compares noise-free values of the champion's knobs on an H100 (the
surrogate's expected metric), so neither noise luck nor the H200's speed counts.
Utilization (busy worker-time over fleet time) is the fleet run's, with a
zero-latency researcher (proposals cost no virtual time).

Run: .venv/bin/python bench/speedup.py [--seeds 0,1,2] [--seq-hours 72] [--fleet-hours 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

from labfleet.simulate import Simulation, clone_target, simulate

BUDGET = 300.0


def expected_curve(sim: Simulation) -> list[tuple[float, float]]:
    """(hours, noise-free H100 metric of the champion) at each keep."""
    assert sim.model is not None
    return [(h, sim.model.expected(knobs, 1.0, BUDGET)) for h, _, knobs in sim.champions]


def first_time(curve: list[tuple[float, float]], goal: float) -> float | None:
    best = float("inf")
    for hours, value in curve:
        best = min(best, value)
        if best <= goal + 1e-12:
            return hours
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--seq-hours", type=float, default=72.0)
    parser.add_argument("--fleet-hours", type=float, default=12.0)
    parser.add_argument("--fleet", default="H100:13,H200:3")
    parser.add_argument("--fleet-researcher", default="waves")
    args = parser.parse_args()

    print(f"{'seed':>4} {'seq best':>9} {'t_seq h':>8} {'seq exps':>8} {'fleet best':>10} {'t_fleet h':>9}"
          f" {'fleet exps':>10} {'speedup':>8} {'util':>6} {'fleet $':>8} {'wall s':>7}")
    speedups, utils = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.time()
        with clone_target(None) as folder:
            seq = simulate(folder, "H100:1", researcher="greedy", hours=args.seq_hours, seed=seed,
                           budget_seconds=BUDGET)
        with clone_target(None) as folder:
            fleet = simulate(folder, args.fleet, researcher=args.fleet_researcher, hours=args.fleet_hours,
                             seed=seed, budget_seconds=BUDGET, screen=["H100"], validate=["H200"])
        seq_curve, fleet_curve = expected_curve(seq), expected_curve(fleet)
        goal = min(v for _, v in seq_curve)
        t_seq = first_time(seq_curve, goal)
        t_fleet = first_time(fleet_curve, goal)
        assert t_seq is not None
        speedup = t_seq / t_fleet if t_fleet else None
        if speedup is not None:
            speedups.append(speedup)
        utils.append(fleet.utilization)
        fleet_best = min(v for _, v in fleet_curve)
        print(f"{seed:>4} {goal:>9.4f} {t_seq:>8.1f} {seq.experiments:>8} {fleet_best:>10.4f}"
              f" {t_fleet if t_fleet is not None else float('nan'):>9.2f} {fleet.experiments:>10}"
              f" {f'{speedup:.1f}x' if speedup else 'never':>8} {fleet.utilization:>6.1%}"
              f" {fleet.cost_usd:>8.0f} {time.time() - started:>7.0f}", flush=True)
    if speedups:
        print(f"speedup: median {statistics.median(speedups):.1f}x over {len(speedups)} seeds"
              f" (anchor 9x, goal >= 12x); fleet utilization mean {statistics.mean(utils):.1%} (goal >= 97%)")
    else:
        print("the fleet never reached the sequential best within --fleet-hours")


if __name__ == "__main__":
    main()
