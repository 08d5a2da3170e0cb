"""Utilization when the researcher is slow: 13 H100 + 3 H200, propose() taking 0/30/90/180 s.

A real model call with a long prompt takes about 90 s. Each column is a simulated
session (``labfleet simulate``: the real loop, ledger, researchers and git on a
virtual clock; 300 s budgets) with ``--researcher-latency`` set, so the call takes
virtual time while the loop goes on collecting, deciding and placing:

- random, waves: the researcher off the loop (one call in flight, a pipeline of
  proposals sized from the measured latency);
- waves, blocking: the same waves wrapped so that ``propose`` itself advances the
  clock (the loop waits for the call, as before the scheduler's proposer): the
  figure this replaces.

Also printed: calls per experiment and the LLM dollars of the token model (a
12k-token prompt and 400 tokens per proposal at $3/$15 per million).

Run: .venv/bin/python bench/researcher_latency.py [--hours 4] [--latencies 0,30,90,180] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

from labfleet.researchers import RESEARCHERS
from labfleet.researchers.waves import WavesResearcher
from labfleet.simulate import clone_target, simulate

BLOCK: dict[str, object] = {}  # the running simulation's clock and latency, for the blocking wrapper


class BlockingWaves(WavesResearcher):
    """Waves whose propose() holds the loop for the latency (the old behaviour)."""

    name = "waves-blocking"

    def propose(self, state, n):  # type: ignore[no-untyped-def]
        out = super().propose(state, n)
        BLOCK["clock"].advance(BLOCK["latency"])  # type: ignore[attr-defined]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--latencies", default="0,30,90,180")
    parser.add_argument("--fleet", default="H100:13,H200:3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    RESEARCHERS[BlockingWaves.name] = BlockingWaves
    latencies = [float(x) for x in args.latencies.split(",")]
    rows = {"random": "random", "waves": "waves", "waves, blocking call (before)": "waves-blocking"}
    table: dict[str, list[str]] = {}
    for label, name in rows.items():
        cells = []
        for latency in latencies:
            started = time.time()
            import labfleet.simulate as sim_module

            clock_holder = sim_module.VirtualClock
            if name == "waves-blocking":  # the wrapper needs the simulation's clock: catch it when made
                def make_clock(*a, _orig=clock_holder, **k):  # type: ignore[no-untyped-def]
                    clock = _orig(*a, **k)
                    BLOCK["clock"] = clock
                    return clock
                sim_module.VirtualClock = make_clock  # type: ignore[misc,assignment]
                BLOCK["latency"] = latency
            try:
                with clone_target(None) as folder:
                    sim = simulate(folder, args.fleet, researcher=name, hours=args.hours, seed=args.seed,
                                   budget_seconds=300.0,
                                   researcher_latency=None if name == "waves-blocking" else latency)
            finally:
                sim_module.VirtualClock = clock_holder  # type: ignore[misc]
            cells.append(f"{sim.utilization:6.1%} {sim.calls_per_experiment:5.2f} ${sim.llm_usd:5.2f}")
            print(f"  {label:<30} {latency:>5g} s: utilization {sim.utilization:.1%}, {sim.experiments} experiments,"
                  f" {sim.llm_calls} calls ({sim.calls_per_experiment:.2f}/exp), LLM ${sim.llm_usd:.2f},"
                  f" wall {time.time() - started:.0f} s", flush=True)
        table[label] = cells
    print()
    print(f"{args.fleet}, {args.hours:g} h, 300 s budgets, seed {args.seed}: utilization, calls/experiment, LLM $")
    print(f"{'researcher':<31}" + "".join(f"{f'{lat:g} s':>22}" for lat in latencies))
    for label, cells in table.items():
        print(f"{label:<31}" + "".join(f"{c:>22}" for c in cells))
    print("goal: utilization >= 97% at 90 s (the blocking row is the behaviour before; no token model there)")


if __name__ == "__main__":
    main()
