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
decides it), so the tiered variant's t_fleet is the time to a trustworthy best. The
``t_lead``/``lead x`` columns say when that confirmed best first led provisionally (the
fleet worked from it from then on; what keeping provisionally and validating in the
background would record as its keep time). Without tiers they equal t_fleet.

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
     [--jobs N: seeds in parallel processes]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
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


VARIANTS = {
    "waves + tiers (screen H100, validate H200)": dict(screen=["H100"], validate=["H200"]),
    "waves, no tiers (keep on screening)": {},
}


def run_seed(seed: int, args: argparse.Namespace) -> list[dict]:
    """One seed: the sequential run, then each fleet variant; a row per variant."""
    model = "measured" if args.surrogate == "measured" else None
    with clone_target(None) as folder:
        seq = simulate(folder, "H100:1", researcher="greedy", hours=args.seq_hours, seed=seed,
                       budget_seconds=BUDGET, surrogate=model)
    seq_curve = expected_curve(seq)
    goal = min(v for _, v in seq_curve)
    t_seq = first_time(seq_curve, goal)
    assert t_seq is not None
    rows = []
    for name, tiers in VARIANTS.items():
        started = time.time()
        with clone_target(None) as folder:
            fleet = simulate(folder, args.fleet, researcher=args.fleet_researcher, hours=args.fleet_hours,
                             seed=seed, budget_seconds=BUDGET, surrogate=model, **tiers)
            led = lead_times(folder, fleet)
        assert fleet.model is not None
        # the soonest a proposal made after seeing any result can be kept: setup, then the
        # baseline's and a screen's run (and a validation's, with tiers) back to back; only a
        # lucky first-round cell, proposed blind, could beat it
        run = fleet.model.overhead_seconds + BUDGET
        earliest = (fleet.model.setup_seconds + (3 if tiers else 2) * run) / 3600
        fleet_curve = expected_curve(fleet)
        t_fleet = first_time(fleet_curve, goal)
        # the confirmed champions at the time each first led provisionally (tiers; without, the keep)
        lead_curve = sorted((min(h, led.get(i, h)), v) for (h, v), i in zip(fleet_curve, led["ids"], strict=True))
        t_lead = first_time(lead_curve, goal)
        rows.append(dict(seed=seed, name=name, goal=goal, t_seq=t_seq, best=min(v for _, v in fleet_curve),
                         t_fleet=t_fleet, t_lead=t_lead, experiments=fleet.experiments, utilization=fleet.utilization,
                         cost=fleet.cost_usd, bound=t_seq / earliest, wall=time.time() - started))
    return rows


def lead_times(folder, sim: Simulation) -> dict:
    """Kept experiment id -> virtual hours when it first led provisionally; "ids": the lineage's ids in order."""
    from labfleet.ledger import Ledger

    ledger = Ledger.for_target(folder / ".labfleet")
    try:
        start = ledger.run_span(sim.session_id)[0]
        out: dict = {"ids": [e.id for e in ledger.lineage(sim.session_id)]}
        rows = ledger.db.execute("SELECT data, at FROM events WHERE session_id = ? AND kind = 'lead' ORDER BY id",
                                 (sim.session_id,))
        for row in rows:
            exp_id = json.loads(row["data"])["experiment"]
            out.setdefault(exp_id, (row["at"] - start) / 3600)
        return out
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--seq-hours", type=float, default=72.0)
    parser.add_argument("--fleet-hours", type=float, default=12.0)
    parser.add_argument("--fleet", default="H100:13,H200:3")
    parser.add_argument("--fleet-researcher", default="waves")
    parser.add_argument("--surrogate", choices=("hand-made", "measured"), default="hand-made")
    parser.add_argument("--jobs", type=int, default=1, help="seeds simulated in parallel processes")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    print(f"surrogate: {args.surrogate}; sequential {args.seq_hours:g} h, fleet {args.fleet_hours:g} h")
    print(f"{'seed':>4} {'variant':<44}{'seq best':>9}{'t_seq h':>8}{'best':>8}{'t_fleet h':>10}{'exps':>6}"
          f"{'speedup':>9}{'bound':>7}{'t_lead h':>9}{'lead x':>7}{'util':>7}{'fleet $':>8}{'wall s':>7}")
    speedups: dict[str, list[float]] = {v: [] for v in VARIANTS}
    utils: dict[str, list[float]] = {v: [] for v in VARIANTS}
    leads: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with concurrent.futures.ProcessPoolExecutor(max(1, args.jobs)) as pool:
        results = pool.map(run_seed, seeds, [args] * len(seeds)) if args.jobs > 1 else map(
            run_seed, seeds, [args] * len(seeds))
        for rows in results:
            for r in rows:
                speedup = r["t_seq"] / r["t_fleet"] if r["t_fleet"] else None
                if speedup is not None:
                    speedups[r["name"]].append(speedup)
                utils[r["name"]].append(r["utilization"])
                t_fleet = r["t_fleet"] if r["t_fleet"] is not None else float("nan")
                t_lead = r["t_lead"] if r["t_lead"] is not None else float("nan")
                lead = r["t_seq"] / r["t_lead"] if r["t_lead"] else None
                leads[r["name"]].append(lead or 0.0)
                print(f"{r['seed']:>4} {r['name']:<44}{r['goal']:>9.4f}{r['t_seq']:>8.1f}{r['best']:>8.4f}"
                      f"{t_fleet:>10.2f}{r['experiments']:>6}{f'{speedup:.1f}x' if speedup else 'never':>9}"
                      f"{r['bound']:>6.1f}x{t_lead:>9.2f}{f'{lead:.1f}x' if lead else 'never':>7}"
                      f"{r['utilization']:>7.1%}{r['cost']:>8.0f}{r['wall']:>7.0f}", flush=True)
    for name in VARIANTS:
        if speedups[name]:
            print(f"{name}: speedup median {statistics.median(speedups[name]):.1f}x over {len(speedups[name])} seeds"
                  f" that reached it ({len(utils[name])} run), utilization median {statistics.median(utils[name]):.1%}")
        else:
            print(f"{name}: never reached the sequential best within --fleet-hours")
    # "never" counts as 0x in the medians over every seed run (a seed that never reached it is not left out)
    tiered, flat = ([r if r is not None else 0.0 for r in _all(speedups[v], len(seeds))] for v in VARIANTS)
    verdict = "not worse" if statistics.median(tiered) >= statistics.median(flat) else "WORSE"
    print(f"over all {len(seeds)} seeds (never = 0x): tiers median {statistics.median(tiered):.1f}x vs no tiers"
          f" {statistics.median(flat):.1f}x ({verdict})")
    print(f"lead x (t_seq over t_lead: when a champion that validation later confirmed first led provisionally;"
          f" never = 0x): tiers median {statistics.median(leads[next(iter(VARIANTS))]):.1f}x")
    print("bound: t_seq over setup + baseline + screen [+ validation] back to back, the soonest a proposal made"
          " after seeing any result can be kept")
    print(f"anchor 9x, goal >= 12x; utilization goal >= 97% (zero-latency researcher); wall {time.time() - started:.0f} s")


def _all(values: list[float], n: int) -> list[float | None]:
    return list(values) + [None] * (n - len(values))


if __name__ == "__main__":
    main()
