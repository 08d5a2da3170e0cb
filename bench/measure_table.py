"""Regenerate the measured table: real tinygpt runs on this CPU over the knob space.

The table (``src/labfleet/data/tinygpt_cpu.csv``) is what ``--surrogate measured``
fits: every run is a real experiment through the harness (a knob patch on the
bundled tinygpt, trained for a fixed small time budget on one thread, evaluated
and signed by the target's frozen ``prepare.py``), two at a time.

The design, in a fixed shuffled order (an interrupted table is a random subset):
- the default config at 5 seeds, and 3 other points at 3 seeds each (the noise);
- one-knob sweeps from the default (seed 0), the axes a greedy researcher walks;
- the rest: random points over the knob space (log-uniform for log knobs,
  uniform over choices), each at a random seed 0-9.

Why a fixed step count and not the time budget: on this shared 2-core machine the
load average ran at 8-11 while the table was made, and a 3-second time budget got
~10 steps where an idle core gets ~200 (tokens/s 25x below the idle figure): a
time-budgeted table would measure the load, not the knobs. So the script first
commits a fixed-step version of train.py in its scratch clone (``while step <
FIXED_STEPS``, the learning-rate schedule by step; an edit of the editable file, as
any experiment is) and every run is a knob patch on top of that. With a fixed step
count and seed a run is bit-identical whatever the load (NOTES.md), so the noise is
seed-to-seed noise. Steps stay in the table as a column: most rows use
``--steps``; the default config also runs at half and double that, which gives the
metric gained per e-fold of steps (what a faster hardware class buys). Each row
still records its training seconds and the 1-minute load average at its start.
What the table does not capture: that a bigger model takes more seconds per step
(a time-budgeted run of it gets fewer steps); see the README's planning section.

Rows are appended to ``PATH.partial`` as runs finish, so a stopped run resumes
where it left off; the finished table is written with a header of ``#`` lines.

Run: .venv/bin/python bench/measure_table.py [--runs 96] [--steps 60] [--parallel 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from labfleet import harness, scaffold, workspace
from labfleet.target import CONFIG_FILE, Knob, KnobValue, knob_patch, load_target

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "labfleet" / "data" / "tinygpt_cpu.csv"
FIGURE_COLUMNS = ("num_steps", "tokens_seen", "training_seconds", "total_seconds", "tokens_per_second")
SWEEPS: dict[str, list[KnobValue]] = {
    "LEARNING_RATE": [3e-4, 3e-3, 1e-2, 3e-2, 1e-1],
    "WEIGHT_DECAY": [0.0, 0.3],
    "WARMUP_FRACTION": [0.0, 0.3],
    "BATCH_SIZE": [4, 16, 32],
    "N_LAYER": [1, 3, 4],
    "N_HEAD": [1, 4],
    "D_MODEL": [32, 48, 96, 128],
}


def draw(knob: Knob, rng: np.random.Generator) -> KnobValue:
    if knob.choices is not None:
        return knob.choices[int(rng.integers(len(knob.choices)))]
    assert knob.low is not None and knob.high is not None
    if knob.log:
        value = math.exp(rng.uniform(math.log(knob.low), math.log(knob.high)))
    else:
        value = float(rng.uniform(knob.low, knob.high))
    value = float(f"{value:.3g}")
    return round(value) if knob.integer else value


def design(knobs: dict[str, Knob], default: dict[str, KnobValue], runs: int, steps: int,
           seed: int) -> list[tuple[dict, int, int]]:
    """(knob values, seed, steps) per run, in a fixed shuffled order."""
    rng = np.random.default_rng(seed)
    plan: list[tuple[dict, int, int]] = [(dict(default), s, steps) for s in range(5)]
    plan += [(dict(default), s, n) for n in (steps // 2, steps * 2) for s in range(2)]
    for _ in range(3):
        point = {name: draw(knob, rng) for name, knob in knobs.items()}
        plan += [(point, s, steps) for s in range(3)]
    for name, values in SWEEPS.items():
        plan += [({**default, name: v}, 0, steps) for v in values if name in knobs]
    while len(plan) < runs:
        plan.append(({name: draw(knob, rng) for name, knob in knobs.items()}, int(rng.integers(10)), steps))
    plan = plan[:runs]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def fixed_steps(train_py: str) -> str:
    """train.py trained for FIXED_STEPS steps (from the environment), the schedule by step."""
    loop = "while training_seconds < BUDGET_SECONDS:"
    schedule = "lr_at(training_seconds / BUDGET_SECONDS)"
    if loop not in train_py or schedule not in train_py:
        raise SystemExit("train.py has no time-budget loop to replace: is this the bundled tinygpt?")
    text = train_py.replace(loop, "while step < FIXED_STEPS:").replace(schedule, "lr_at(step / FIXED_STEPS)")
    return text.replace("# model\n", "FIXED_STEPS = 60  # training steps (measure_table.py)\n\n# model\n", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=96)
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (the default config also"
                        " runs at half and double)")
    parser.add_argument("--timeout", type=float, default=300, help="hard limit per run, seconds")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the design (which points, which seeds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--finish", action="store_true", help="run nothing: write the table from the runs in"
                        " PATH.partial so far (a table stopped early is a random subset of the design)")
    args = parser.parse_args()
    partial = args.out.with_name(args.out.name + ".partial")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        train_py = folder / "train.py"
        train_py.write_text(fixed_steps(train_py.read_text()))
        toml = folder / CONFIG_FILE
        toml.write_text(toml.read_text() + 'FIXED_STEPS = { file = "train.py", low = 1, high = 1000000 }\n')
        workspace.git(folder, "commit", "--quiet", "-am", "measure: train for a fixed step count")
        harness.prepare(folder)
        target = load_target(folder)
        knobs, default = dict(target.knobs), target.read_knobs()
        knobs.pop("FIXED_STEPS")
        default.pop("FIXED_STEPS")
        names = list(knobs)
        columns = ["index", "seed", "steps", "threads", "outcome", target.spec.metric, *FIGURE_COLUMNS,
                   "run_seconds", "load1", *names]
        plan = design(knobs, default, args.runs, args.steps, args.seed)
        done: set[int] = set()
        if partial.exists():
            with partial.open() as f:
                done = {int(row["index"]) for row in csv.DictReader(f)}
        else:
            partial.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("w", newline="") as f:
                csv.writer(f).writerow(columns)
        lock = threading.Lock()
        counter = {"n": len(done)}

        def run(index: int) -> None:
            values, seed, steps = plan[index]
            changed = {k: v for k, v in values.items() if v != default[k] or type(v) is not type(default[k])}
            changed["FIXED_STEPS"] = steps
            load1 = os.getloadavg()[0]
            request = harness.RunRequest(target_dir=folder, run_dir=Path(tmp) / "runs" / str(index),
                                         patch=knob_patch(target, changed), seed=seed,
                                         budget_seconds=args.timeout, threads=1)
            result = harness.run_experiment(request)
            row = [index, seed, steps, 1, str(result.outcome),
                   "" if result.metric is None else f"{result.metric:.6f}",
                   *(result.figures.get(c, "") for c in FIGURE_COLUMNS), f"{result.run_seconds:.3f}",
                   f"{load1:.2f}", *(values[n] for n in names)]
            with lock:
                with partial.open("a", newline="") as f:
                    csv.writer(f).writerow(row)
                counter["n"] += 1
                print(f"  [{counter['n']}/{len(plan)}] run {index}: {result.outcome} {result.metric}"
                      f" ({result.run_seconds:.1f} s, load {load1:.1f})", flush=True)

        if not args.finish:
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(run, [i for i in range(len(plan)) if i not in done]))

    with partial.open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    loads = [float(r["load1"]) for r in rows]
    ok = [r for r in rows if r["outcome"] == "ok"]
    header = [
        "tinygpt on CPU: the measured table behind `--surrogate measured` (regenerate: bench/measure_table.py)",
        f"{len(rows)} real runs (of a {args.runs}-run design) through the harness: knob patches on the bundled tinygpt trained for a fixed"
        f" step count (--steps {args.steps}; the default config also at half and double), 1 thread each,"
        f" {args.parallel} at a time; design seed {args.seed}",
        f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()};"
        f" shared with other work: 1-minute load average at run start median {statistics.median(loads):.1f}"
        f" (range {min(loads):.1f}-{max(loads):.1f})",
        f"outcomes: {len(ok)} ok of {len(rows)}; generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({sum(float(r['run_seconds']) for r in rows) / 60 / args.parallel:.0f} min of runs, {args.parallel} at a time)",
        "columns: the run's seed and step count, outcome, metric, the figures train.py printed"
        " (training_seconds: wall seconds of the steps under that load), run_seconds (process wall time: start-up + training + evaluation), load1,"
        " then the knob values",
    ]
    with args.out.open("w", newline="") as f:
        f.writelines(f"# {line}\n" for line in header)
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    partial.unlink()
    print(f"wrote {args.out}: {len(rows)} runs, {len(ok)} ok")


if __name__ == "__main__":
    main()
