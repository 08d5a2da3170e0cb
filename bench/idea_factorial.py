"""A code-idea factorial on real tinygpt: 3 ideas, 8 cells, one pair designed to interact; what `labfleet effects` says.

The LLM researcher in ideas mode (``ideas=3``) gets its ideas from the scripted
model (bench/scripted_ideas.py, served by tests/fake_llm.py: the real client code
runs): LR_UP (peak learning rate x10), LR_DOWN (the schedule x0.1: it undoes
LR_UP, so the pair interacts) and RELU (GELU -> ReLU, independent). The system
designs the 2^3 wave (the all-off cell is the baseline itself), runs the 7 other
cells on two workers with two extra baseline seeds for the noise floor (10 runs in
all, under 16), and `labfleet effects` (the real command) reports each idea's main
effect and the interactions with 95% CIs.

Run: .venv/bin/python bench/idea_factorial.py [--budget 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_ideas import INTERACTING, ScriptedModel  # noqa: E402

from labfleet import harness, scaffold  # noqa: E402
from labfleet.ledger import Ledger  # noqa: E402
from labfleet.session import SessionConfig  # noqa: E402
from labfleet.session.wiring import open_session  # noqa: E402
from labfleet.target import load_target  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    model = ScriptedModel(INTERACTING)
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench-not-a-key")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        harness.prepare(folder)
        target = load_target(folder)
        config = SessionConfig(researcher="llm", workers=args.workers, budget_seconds=args.budget, seed=args.seed,
                               max_experiments=7, keep="margin", noise_repeats=2)
        options = dict(provider="anthropic", model="scripted", base_url=model.url, ideas=3, max_retries=0)
        try:
            with open_session(target, config, new=True, researcher_options=options) as wired:
                wired.run()
                sid = wired.session_id
        finally:
            model.close()
        ledger = Ledger.for_target(target.state_dir)
        runs = ledger.db.execute("SELECT COUNT(*) AS n FROM runs WHERE session_id = ? AND status = 'done'",
                                 (sid,)).fetchone()["n"]
        experiments = ledger.db.execute("SELECT COUNT(*) AS n FROM experiments WHERE session_id = ?",
                                        (sid,)).fetchone()["n"]
        print(f"tinygpt, {args.budget:g} s per run, {args.workers} workers: {experiments} experiments "
              f"(baseline + 7 cells), {runs} runs done (the repeats measure the noise floor), "
              f"{time.time() - started:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
        for row in ledger.db.execute(
            "SELECT e.id, e.description, AVG(r.metric) AS m, COUNT(r.id) AS n FROM experiments e JOIN runs r"
            " ON r.experiment_id = e.id WHERE e.session_id = ? AND r.status = 'done' GROUP BY e.id ORDER BY e.id",
            (sid,),
        ):
            print(f"  e{row['id']:<3} {row['m']:.4f}  ({row['n']} run{'s' * (row['n'] != 1)})  {row['description']}")
        print("\n$ labfleet effects", flush=True)
        out = subprocess.run([sys.executable, "-m", "labfleet", "effects", "-C", str(folder)], capture_output=True,
                             text=True, env={**os.environ, "COLUMNS": "200"})
        print(out.stdout + out.stderr)


if __name__ == "__main__":
    main()
