"""Experiments to reach a target val_bpb: random, Optuna TPE, CMA-ES, waves and hybrid, real tinygpt on CPU.

Each researcher runs a real session (real training through the harness, two
workers, a small budget) for --experiments experiments, once per seed, on the same
knobs. The hybrid's ideas come from a scripted model (bench/scripted_ideas.py: a
fixed list of real structural ideas for train.py, some good, some bad) served by
tests/fake_llm.py's local server, so the real LLM client code runs offline; its
knobs are re-tuned by TPE after each structural keep (and first around the baseline). A session's curve is its best metric after each finished experiment; for a
target, the count is the first experiment at which the curve reaches it (a session
that never does counts as experiments + 1, and is marked). Targets are set from
the runs themselves: fractions of the mean best gain over the baseline, so they
are neither trivial nor out of reach.

Run: .venv/bin/python bench/vs_optuna.py [--experiments 24] [--seeds 0,1,2,3,4] [--budget 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_ideas import ScriptedModel  # noqa: E402

from labfleet import harness, scaffold
from labfleet.ledger import Ledger
from labfleet.session import SessionConfig
from labfleet.session.wiring import open_session
from labfleet.target import load_target

RESEARCHERS = ("random", "optuna", "cmaes", "waves", "hybrid")
LABELS = {"optuna": "TPE", "cmaes": "CMA-ES"}
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
    config = SessionConfig(researcher=researcher, workers=args.workers, budget_seconds=args.budget, seed=seed,
                           max_experiments=args.experiments, keep="margin", noise_repeats=0)
    options: dict = {}
    model = None
    if researcher == "hybrid":
        model = ScriptedModel()
        os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench-not-a-key")
        options = dict(provider="anthropic", model="scripted", base_url=model.url, ideas=args.ideas,
                       tune_experiments=args.tune, max_retries=0)
    try:
        with open_session(target, config, new=True, researcher_options=options) as wired:
            wired.run()
            sid = wired.session_id
    finally:
        if model is not None:
            model.close()
    ledger = Ledger.for_target(target.state_dir)
    if researcher == "hybrid":
        kept = ledger.db.execute("SELECT description FROM experiments WHERE session_id = ? AND decision = 'kept'",
                                 (sid,)).fetchall()
        print(f"    hybrid seed {seed} kept: {'; '.join(r['description'] for r in kept) or 'nothing'}", flush=True)
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
    parser.add_argument("--ideas", type=int, default=2, help="hybrid: ideas per model call")
    parser.add_argument("--tune", type=int, default=4, help="hybrid: re-tuning experiments after each structural keep")
    parser.add_argument("--from-ledger", type=Path, default=None,
                        help="print the table from the finished sessions of an earlier run's ledger (run nothing)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="start no session after this many seconds; the table covers the seeds finished")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.researchers.split(",")

    curves: dict[str, list[tuple[float, list[float]]]] = {n: [] for n in names}
    started = time.time()
    if args.from_ledger is not None:
        import json

        ledger = Ledger(args.from_ledger)
        for row in ledger.db.execute("SELECT id, config FROM sessions WHERE status = 'finished' ORDER BY id"):
            config = json.loads(row["config"])
            if config["researcher"] in curves:
                curves[config["researcher"]].append(curve(ledger, row["id"]))
                args.experiments = config["max_experiments"]
                args.budget, args.workers = config["budget_seconds"], config["workers"]
        args.seeds = ",".join(f"{LABELS.get(n, n)} x{len(c)}" for n, c in curves.items())
        names = [n for n in names if curves[n]]
        table(curves, names, args, started)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        harness.prepare(folder)
        for seed in seeds:
            if args.max_seconds is not None and time.time() - started > args.max_seconds:
                print(f"  out of time: seeds from {seed} on not run", flush=True)
                break
            for name in names:
                t0 = time.time()
                base, points = run_one(folder, name, seed, args)
                curves[name].append((base, points))
                print(f"  {name:<8} seed {seed}: baseline {base:.4f} -> best {points[-1]:.4f}"
                      f" in {len(points)} experiments ({time.time() - t0:.0f} s)", flush=True)

    table(curves, names, args, started)


def table(curves: dict[str, list[tuple[float, list[float]]]], names: list[str], args: argparse.Namespace,
          started: float) -> None:
    baseline = statistics.mean(b for runs in curves.values() for b, _ in runs)
    best = statistics.mean(p[-1] for runs in curves.values() for _, p in runs)
    load = os.getloadavg()[0]
    print(f"\ntinygpt, {args.budget:g} s per run, {args.workers} workers, {args.experiments} experiments,"
          f" seeds {args.seeds}; {time.time() - started:.0f} s in all; load average at the end {load:.1f}"
          f" on {os.cpu_count()} cores")
    print(f"mean baseline {baseline:.4f}, mean final best {best:.4f}")
    for name in names:
        finals = [p[-1] for _, p in curves[name]]
        print(f"  {LABELS.get(name, name):<8} final best {statistics.mean(finals):.4f}"
              f" (sd {statistics.pstdev(finals):.4f}, {min(finals):.4f}-{max(finals):.4f})")
    header = f"{'target val_bpb':<22}" + "".join(f"{LABELS.get(n, n):>16}" for n in names)
    compare = [n for n in ("waves", "hybrid") if n in names]
    if compare and "optuna" in names:
        header += f"{'best/TPE':>10}"
    print(header)
    for fraction in FRACTIONS:
        goal = baseline - fraction * (baseline - best)
        means = {}
        row = f"{goal:.4f} ({fraction:.0%} of gain)  "
        for name in names:
            counts = [reached(p, goal) for _, p in curves[name]]
            missed = sum(c is None for c in counts)
            filled = [c if c is not None else args.experiments + 1 for c in counts]
            means[name] = statistics.mean(filled)
            cell = f"{means[name]:.1f} ({min(filled)}-{max(filled)}){'*' if missed else ''}"
            row += f"{cell:>16}"
        if compare and "optuna" in means:
            row += f"{min(means[n] for n in compare) / means['optuna']:>9.2f}x"
        print(row)
    print("experiments to reach the target: mean over seeds (min-max); * = some seed never reached it (counted as"
          f" {args.experiments + 1}); best/TPE = the better of waves and hybrid over TPE (goal <= 0.7x)")


if __name__ == "__main__":
    main()
