"""What a run costs beyond its training budget: this tree against an older commit, side by side.

Each round runs the bundled tinygpt once through each version's harness (fresh
interpreter per run, setup cached, 1 thread), alternating, and records the run
command's wall time, the training time train.py reports, and their difference
(start-up, evaluation, and since the frozen evaluator: the evaluator's own
process). The table gives the mean and sd of each per version.

Run: .venv/bin/python bench/eval_overhead.py [--before bb55db6] [--budget 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, sys, time
from pathlib import Path
from labfleet import harness, scaffold
work, budget, seed = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
folder = work / "tinygpt"
if not folder.exists():
    scaffold.init_bundled(folder)
harness.prepare(folder, cache_root=work / "cache")
t = time.perf_counter()
r = harness.run_experiment(harness.RunRequest(target_dir=folder, run_dir=work / f"run-{time.monotonic_ns()}",
                                              cache_root=work / "cache", budget_seconds=budget, seed=seed))
print(json.dumps({"outcome": str(r.outcome), "reason": r.reason, "run": r.run_seconds,
                  "harness": time.perf_counter() - t, "training": r.figures.get("training_seconds"),
                  "metric": r.metric}))
"""


def one(src: Path, work: Path, budget: float, seed: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(work), str(budget), str(seed)],
                          capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["outcome"] != "ok":
        raise SystemExit(f"{src}: {out['outcome']}: {out['reason']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="bb55db6", help="the commit to compare with")
    parser.add_argument("--budget", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labfleet-bench-") as tmp:
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        versions = {f"before ({args.before})": old / "src", "this tree": REPO / "src"}
        rows: dict[str, list[dict]] = {name: [] for name in versions}
        for name, src in versions.items():  # warm-up: setup and the page cache, not measured
            one(src, Path(tmp) / name.split()[0], args.budget, 0)
        for k in range(args.rounds):
            for name, src in versions.items():
                rows[name].append(one(src, Path(tmp) / name.split()[0], args.budget, k + 1))
    print(f"tinygpt, budget {args.budget:g} s, 1 thread, {args.rounds} rounds alternating")
    print(f"{'version':<22}{'run wall s':>14}{'training s':>14}{'beyond budget s':>18}{'val_bpb':>12}")
    for name, runs in rows.items():
        def stat(values: list[float]) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.2f} ±{sd:.2f}"
        print(f"{name:<22}{stat([r['run'] for r in runs]):>14}{stat([r['training'] for r in runs]):>14}"
              f"{stat([r['run'] - r['training'] for r in runs]):>18}{statistics.mean(r['metric'] for r in runs):>12.4f}")


if __name__ == "__main__":
    main()
