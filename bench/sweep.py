"""A one-knob sweep of the bundled tinygpt target, through the harness.

Shows that tinygpt's defaults are a starting point, not the optimum: a research
session has something to find. Each value of the knob is a knob patch on the
default version, trained at the full budget; two runs at a time (one per core).

Run: .venv/bin/python bench/sweep.py [--knob LEARNING_RATE] [--values 1e-3,2e-3,3e-3,6e-3,1e-2] [--budget 30]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labfleet import harness, scaffold
from labfleet.target import format_value, knob_patch, load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--knob", default="LEARNING_RATE")
    parser.add_argument("--values", default="1e-3,2e-3,3e-3,6e-3,1e-2")
    parser.add_argument("--budget", type=float, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        harness.prepare(folder)
        target = load_target(folder)
        default = target.read_knobs()[args.knob]
        values = [type(default)(float(v)) for v in args.values.split(",")]

        def run(value: float) -> harness.RunResult:
            patch = knob_patch(target, {args.knob: value}) if value != default else ""
            request = harness.RunRequest(target_dir=folder, run_dir=Path(tmp) / "runs" / f"{value}", patch=patch,
                                         seed=args.seed, budget_seconds=args.budget, threads=1)
            return harness.run_experiment(request)

        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(run, values))
        base = next((r.metric for v, r in zip(values, results, strict=True) if v == default), None)
        print(f"{args.knob} sweep at {args.budget:g} s on 1 thread, seed {args.seed} (default {format_value(default)})")
        print(f"  {args.knob:<16}{target.spec.metric:>10}{'vs default':>12}")
        for value, result in zip(values, results, strict=True):
            metric = f"{result.metric:.4f}" if result.metric is not None else result.outcome
            delta = f"{result.metric - base:+.4f}" if result.metric is not None and base is not None else ""
            mark = "  (default)" if value == default else ""
            print(f"  {format_value(value):<16}{metric:>10}{delta:>12}{mark}")


if __name__ == "__main__":
    main()
