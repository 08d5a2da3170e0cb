"""The planner's prediction error on held-back real runs, next to the noise: a table over several splits.

`labfleet simulate --surrogate measured` and `--from-ledger` fit a Gaussian process
(labfleet.planning.fit, scikit-learn) to real runs and print one held-out line for
one split. This bench repeats that check over --splits random splits of the shipped
measured table (src/labfleet/data/tinygpt_cpu.csv: real tinygpt runs on CPU, see
bench/measure_table.py): each split holds back 20% of the distinct knob configs
(every repeat of a held-back config goes with it, so a twin never leaks its value),
fits on the rest and predicts the held-back runs. Printed per split: mean absolute
error, RMSE, R^2, and two references: the seed-to-seed noise sd from the table's
repeats (the floor: no model of the knobs predicts one run better than its noise)
and the RMSE of predicting every held-back run by the mean of the table (what a
fit that learned nothing would score).

Run: .venv/bin/python bench/plan_error.py [--splits 10] [--holdout 0.2]   (needs the plan extra)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from importlib import resources

from labfleet import planning
from labfleet.target import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--holdout", type=float, default=0.2, help="share of distinct configs held back per split")
    args = parser.parse_args()
    planning.require_sklearn()
    target = load_target(resources.files("labfleet").joinpath("targets", "tinygpt"), check_files=False)
    observations, header = planning.measured_table(target.knobs, target.spec.metric)
    ok = [o.metric for o in observations if o.ok and o.metric is not None]
    mean_all = statistics.mean(ok)
    started = time.time()
    print(f"{header[0] if header else planning.MEASURED_TABLE}")
    print(f"{len(observations)} runs ({len(ok)} ok), {args.holdout:.0%} of configs held back per split,"
          f" Gaussian process refitted per split\n")
    print(f"{'split':>5} {'held configs':>13} {'held runs':>10} {'MAE':>8} {'RMSE':>8} {'noise sd':>9}"
          f" {'RMSE/noise':>11} {'R^2':>6} {'mean-only RMSE':>15}")
    rows = []
    for split in range(args.splits):
        model = planning.fit(observations, target.knobs, direction=target.spec.direction,
                             metric_name=target.spec.metric, holdout=args.holdout, seed=split)
        held = model.holdout
        if held is None or not held.runs:
            print(f"{split:>5}  too few configs to hold any back")
            continue
        naive = math.sqrt(statistics.mean((m - mean_all) ** 2 for _, m in held.pairs))
        rows.append((held.mae, held.rmse, held.noise_sd, held.r2, naive))
        print(f"{split:>5} {held.configs:>13} {held.runs:>10} {held.mae:>8.4f} {held.rmse:>8.4f} {held.noise_sd:>9.4f}"
              f" {held.rmse / held.noise_sd:>11.2f} {held.r2:>6.2f} {naive:>15.4f}")
    if rows:
        cols = list(zip(*rows, strict=True))
        print(f"{'mean':>5} {'':>13} {'':>10} {statistics.mean(cols[0]):>8.4f} {statistics.mean(cols[1]):>8.4f}"
              f" {statistics.mean(cols[2]):>9.4f} {statistics.mean(cols[1]) / statistics.mean(cols[2]):>11.2f}"
              f" {statistics.mean(cols[3]):>6.2f} {statistics.mean(cols[4]):>15.4f}")
        print(f"{'sd':>5} {'':>13} {'':>10} {statistics.pstdev(cols[0]):>8.4f} {statistics.pstdev(cols[1]):>8.4f}"
              f" {'':>9} {'':>11} {statistics.pstdev(cols[3]):>6.2f} {statistics.pstdev(cols[4]):>15.4f}")
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
