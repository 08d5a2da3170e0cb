"""Fleet speedup on the simulator: 16 workers with waves + tiers against one worker with greedy.

The seed run's claim, measured: an agent on 13 H100 + 3 H200 reached the best that
one GPU found sequentially about 9x sooner (8 h vs 72 h). Here, on the same
surrogate objective and seeds (labfleet's simulated executor: the real scheduler,
ledger and researchers on a virtual clock, 5-minute budgets, per-run overhead,
setup, crashes and hangs):

- sequential: 1 x H100, the greedy researcher (autoresearch's loop), for --seq-hours;
  its best is the target, and the time it first reached that best is t_seq;
- fleet: H100:13 + H200:3, the waves researcher, for --fleet-hours, twice: screening
  on H100 and validating winners on H200 (tiers), and keeping on the screening
  result alone (no tiers); t_fleet is when its champion first reached the target.

With tiers, a screened winner that beats the lead beyond the screen noise leads
provisionally (the researcher proposes around it at once) while the H200s validate
it; only a *confirmed* champion counts here (a keep, recorded when its validation
decides it), so the tiered variant's t_fleet is the time to a trustworthy best.

"Reached" compares noise-free values of the champion's knobs on an H100 (the
surrogate's expected metric), so neither noise luck nor the H200's speed counts.
Utilization (busy worker-time over fleet time) is the fleet run's, with a
zero-latency researcher (proposals cost no virtual time).

With tiers the validate class is treated as scarce (``labfleet.scheduler``): screened
winners are ranked by the probability that they beat the champion, the best are
validated first, winners the champion has passed are dropped before they cost a
run, the rest are confirmed cheaply on the screen class while they wait, and the
H200s screen whenever no validation needs them (backfill).

--surrogate measured runs the same against the surrogate fitted to real tinygpt runs
on CPU (labfleet.planning; needs the plan extra) instead of the hand-made bowl.

Run: .venv/bin/python bench/speedup.py [--seeds 0,1,2,3,4] [--seq-hours 72] [--fleet-hours 12] [--surrogate measured]
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
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--seq-hours", type=float, default=72.0)
    parser.add_argument("--fleet-hours", type=float, default=12.0)
    parser.add_argument("--fleet", default="H100:13,H200:3")
    parser.add_argument("--fleet-researcher", default="waves")
    parser.add_argument("--surrogate", choices=("hand-made", "measured"), default="hand-made")
    args = parser.parse_args()
    model = "measured" if args.surrogate == "measured" else None

    variants = {
        "waves + tiers (screen H100, validate H200)": dict(screen=["H100"], validate=["H200"]),
        "waves, no tiers (keep on screening)": {},
    }
    print(f"{'seed':>4} {'variant':<44}{'seq best':>9}{'t_seq h':>8}{'best':>8}{'t_fleet h':>10}{'exps':>6}"
          f"{'speedup':>9}{'util':>7}{'fleet $':>8}{'wall s':>7}")
    speedups: dict[str, list[float]] = {v: [] for v in variants}
    utils: dict[str, list[float]] = {v: [] for v in variants}
    for seed in (int(s) for s in args.seeds.split(",")):
        with clone_target(None) as folder:
            seq = simulate(folder, "H100:1", researcher="greedy", hours=args.seq_hours, seed=seed,
                           budget_seconds=BUDGET, surrogate=model)
        seq_curve = expected_curve(seq)
        goal = min(v for _, v in seq_curve)
        t_seq = first_time(seq_curve, goal)
        assert t_seq is not None
        for name, tiers in variants.items():
            started = time.time()
            with clone_target(None) as folder:
                fleet = simulate(folder, args.fleet, researcher=args.fleet_researcher, hours=args.fleet_hours,
                                 seed=seed, budget_seconds=BUDGET, surrogate=model, **tiers)
            fleet_curve = expected_curve(fleet)
            t_fleet = first_time(fleet_curve, goal)
            speedup = t_seq / t_fleet if t_fleet else None
            if speedup is not None:
                speedups[name].append(speedup)
            utils[name].append(fleet.utilization)
            print(f"{seed:>4} {name:<44}{goal:>9.4f}{t_seq:>8.1f}{min(v for _, v in fleet_curve):>8.4f}"
                  f"{t_fleet if t_fleet is not None else float('nan'):>10.2f}{fleet.experiments:>6}"
                  f"{f'{speedup:.1f}x' if speedup else 'never':>9}{fleet.utilization:>7.1%}{fleet.cost_usd:>8.0f}"
                  f"{time.time() - started:>7.0f}", flush=True)
    for name in variants:
        if speedups[name]:
            print(f"{name}: speedup median {statistics.median(speedups[name]):.1f}x over {len(speedups[name])} seeds"
                  f" that reached it ({len(utils[name])} run), utilization median {statistics.median(utils[name]):.1%}")
        else:
            print(f"{name}: never reached the sequential best within --fleet-hours")
    tiered, flat = (speedups[v] for v in variants)
    if tiered and flat:
        verdict = "not worse" if statistics.median(tiered) >= statistics.median(flat) else "WORSE"
        print(f"tiers vs no tiers, same seeds: median {statistics.median(tiered):.1f}x vs {statistics.median(flat):.1f}x"
              f" ({verdict})")
    print("anchor 9x, goal >= 12x; utilization goal >= 97% (zero-latency researcher)")


if __name__ == "__main__":
    main()
