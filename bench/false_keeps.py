"""False keeps under pure noise: fixed margin vs noise-aware keeps, on the simulator.

Every knob has zero effect (the surrogate's weights are all 0), so any keep is a
false one: the "improvement" was seed noise. Each rule runs --sessions short
sessions of --experiments experiments (different seeds) with the random researcher;
the rate is keeps / decided experiments. Rules:

- margin 0: autoresearch's rule, keep whatever measures better;
- margin 1 sd: a fixed margin of one noise standard deviation;
- noise-aware: labfleet's default, beat the champion by z=2 standard errors of the
  measured noise, or win a confirmation repeat (the baseline runs 3 seeds first).

--surrogate measured: the knobs keep the effects fitted to real tinygpt runs on CPU
(labfleet.planning) and the noise is the measured one; a keep is false when the
kept config's noise-free value is not better than the champion's it replaced
(margin 1 sd uses the measured sd).

Run: .venv/bin/python bench/false_keeps.py [--sessions 20] [--experiments 30] [--noise 0.002] [--surrogate measured]
"""

from __future__ import annotations

import argparse
import time

from labfleet.simulate import clone_target, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--experiments", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.002)
    parser.add_argument("--fleet", default="H100:4")
    parser.add_argument("--surrogate", choices=("hand-made", "measured"), default="hand-made")
    args = parser.parse_args()
    if args.surrogate == "measured":
        from labfleet import planning
        from labfleet.target import load_target

        with clone_target(None) as folder:
            args.noise = planning.measured(load_target(folder, check_files=False), budget_seconds=300).noise_sd
    rules = {
        "margin 0": dict(keep="margin", margin=0.0),
        "margin 1 sd": dict(keep="margin", margin=args.noise),
        "noise-aware (z=2 + repeat)": dict(keep="noise"),
    }
    what = f"pure noise (sd {args.noise})" if args.surrogate == "hand-made" else (
        f"the measured surrogate (noise sd {args.noise:.4f}); false = not better noise-free")
    print(f"{what}, {args.sessions} sessions x {args.experiments} experiments, {args.fleet}")
    print(f"{'rule':<28}{'keeps':>7}{'decided':>9}{'false-keep rate':>17}{'runs/exp':>10}{'wall s':>8}")
    for name, rule in rules.items():
        started = time.time()
        keeps = decided = runs = 0
        for seed in range(args.sessions):
            with clone_target(None) as folder:
                from labfleet.target import load_target

                zero = {k: 0.0 for k in load_target(folder, check_files=False).knobs}
                model = "measured" if args.surrogate == "measured" else dict(
                    weights=zero, interactions={}, noise_sd=args.noise, crash_rate=0.0, hang_rate=0.0)
                sim = simulate(folder, args.fleet, researcher="random", hours=None, seed=seed,
                               max_experiments=args.experiments, budget_seconds=300, surrogate=model, **rule)
            if args.surrogate == "measured":
                assert sim.model is not None
                values = [sim.model.expected(knobs, 1.0, 300) for _, _, knobs in sim.champions]
                keeps += sum(new >= old for old, new in zip(values, values[1:], strict=False))
            else:
                keeps += sim.decisions.get("kept", 0)
            decided += sum(n for d, n in sim.decisions.items() if d in ("kept", "discarded"))
            runs += sim.runs
        rate = keeps / decided if decided else 0.0
        print(f"{name:<28}{keeps:>7}{decided:>9}{rate:>16.1%}{runs / (args.sessions * (args.experiments + 1)):>10.2f}"
              f"{time.time() - started:>8.0f}", flush=True)
    print("goal: noise-aware under 5%")


if __name__ == "__main__":
    main()
