"""Utilization of a real session driven by the LLM researcher whose model takes ~20 s to answer.

The real LLM researcher (official Anthropic SDK) talks to the local fake model
server (tests/fake_llm.py, the real Messages protocol) that answers each call after
--latency seconds with --per-call proposals. 2 local workers train the bundled
tinygpt with 3-5 s budgets (``--budget``), for --experiments experiments. The
researcher's calls run off the loop, so workers keep training while the model
thinks; one call fills several workers. Printed: utilization (busy run time /
workers x wall, from the first start to the last end) and calls per experiment.

Run (from the repository root): .venv/bin/python bench/llm_utilization.py [--latency 20] [--budget 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labfleet import harness, scaffold  # noqa: E402
from labfleet.ledger import Ledger  # noqa: E402
from labfleet.session import SessionConfig  # noqa: E402
from labfleet.session.wiring import open_session  # noqa: E402
from labfleet.target import load_target  # noqa: E402
from tests.fake_llm import FakeLLM, Reply  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=20.0)
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--experiments", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-call", type=int, default=12, help="proposals the model offers per call (capped at n)")
    args = parser.parse_args()
    ideas = itertools.count(1)

    def model(request):  # type: ignore[no-untyped-def]
        time.sleep(args.latency)
        edits = []  # distinct code per idea (a comment alone is the parent's code: the novelty check rejects it)
        for _ in range(args.per_call):
            k = next(ideas)
            edits.append({"description": f"idea {k}", "hypothesis": "a note the code carries",
                          "edits": [{"file": "train.py", "search": "import torch\n",
                                     "replace": f"import torch\nIDEA_{k} = {k}\n"}]})
        return Reply(edits)

    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-bench-not-a-key")
    with tempfile.TemporaryDirectory() as tmp, FakeLLM() as fake:
        fake.responder = model
        folder = Path(tmp) / "tinygpt"
        scaffold.init_bundled(folder)
        harness.prepare(folder)
        target = load_target(folder)
        options = {"provider": "anthropic", "model": "fake-model", "base_url": fake.url}
        config = SessionConfig(researcher="llm", workers=args.workers, budget_seconds=args.budget,
                               max_experiments=args.experiments, keep="margin", noise_repeats=0,
                               researcher_options=options)
        with open_session(target, config, new=True) as wired:
            started = time.time()
            wired.run()
        ledger, sid = Ledger.for_target(target.state_dir), wired.session_id
        runs = [r for r in ledger.runs(sid) if r.started_at and r.ended_at]
        first = min(r.started_at for r in runs)  # type: ignore[type-var]
        last = max(r.ended_at for r in runs)  # type: ignore[type-var]
        busy = sum(r.ended_at - r.started_at for r in runs)  # type: ignore[operator]
        calls = [json.loads(r["data"]) for r in ledger.db.execute(
            "SELECT data FROM events WHERE session_id = ? AND kind = 'llm_call'", (sid,))]
        experiments = ledger.proposed_count(sid)
        utilization = busy / (args.workers * (last - first))
        print(f"LLM researcher, fake model answering after {args.latency:g} s, {args.workers} local workers, "
              f"{args.budget:g} s budgets, {experiments} experiments, {len(runs)} runs, "
              f"{time.time() - started:.0f} s in all")
        print(f"  {'utilization (busy / workers x wall)':<40}{utilization:8.1%}   goal >= 90%  "
              f"{'ok' if utilization >= 0.9 else 'MISSED'}")
        print(f"  {'model calls':<40}{len(calls):8d}")
        print(f"  {'calls per experiment':<40}{len(calls) / max(experiments, 1):8.2f}")
        print(f"  {'mean call seconds':<40}{sum(c['seconds'] for c in calls) / max(len(calls), 1):8.1f}")


if __name__ == "__main__":
    main()
