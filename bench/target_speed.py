"""tinygpt's training speed against a minimal plain PyTorch loop, and its seed-to-seed spread.

1. Speed: tinygpt's train.py (run through labfleet's harness, as in a session)
   against a minimal training loop written here over the same model class, the
   same data arrays and hyperparameters (no schedule, no logging, nothing else),
   both on 1 thread with flush-denormal. They run alternately, the same budget
   each, side by side in one invocation; the table gives tokens/s and the ratio
   (goal >= 0.95).
2. Spread: the baseline val_bpb, mean and sd over N seeds at the full budget on
   1 thread (through the harness: signed metric, cached setup).

Run: .venv/bin/python bench/target_speed.py [--budget 30] [--seeds 5] [--rounds 2] [--speed-budget 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labfleet import harness, scaffold

PLAIN_LOOP = """
import os, sys, time
sys.path.insert(0, os.getcwd())
import numpy as np, torch, torch.nn.functional as F
import prepare
torch.set_num_threads(1)
torch.set_flush_denormal(True)
source = open("train.py").read().split("# --------------------------------------------------------------------------- setup")[0]
train = {"__name__": "tinygpt_model"}
exec(source, train)  # the hyperparameters and the GPT class, nothing else
torch.manual_seed(0)
rng = np.random.default_rng(0)
data = prepare.load_split("train")
model = train["GPT"]()
opt = torch.optim.AdamW(model.parameters(), lr=train["LEARNING_RATE"], weight_decay=train["WEIGHT_DECAY"])
budget, tokens, elapsed = float(sys.argv[1]), 0, 0.0
while elapsed < budget:
    t0 = time.perf_counter()
    x, y = prepare.get_batch(data, train["BATCH_SIZE"], train["SEQ_LEN"], rng)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss = F.cross_entropy(model(x).view(-1, prepare.VOCAB_SIZE), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    tokens += x.numel()
    elapsed += time.perf_counter() - t0
print(tokens / elapsed)
"""


def run_train(folder: Path, runs: Path, seed: int, budget: float) -> harness.RunResult:
    request = harness.RunRequest(target_dir=folder, run_dir=runs / f"s{seed}-{time.monotonic_ns()}",
                                 seed=seed, budget_seconds=budget, threads=1)
    result = harness.run_experiment(request)
    if result.outcome != harness.Outcome.OK:
        sys.exit(f"train.py run failed: {result.outcome} {result.reason}\n{result.log_tail}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=30, help="budget for the seed spread (s)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating speed rounds")
    parser.add_argument("--speed-budget", type=float, default=15, help="training seconds per speed run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tinygpt"
        runs = Path(tmp) / "runs"
        scaffold.init_bundled(folder)
        cache_dir, _, _ = harness.prepare(folder)
        env = {**os.environ, "LABFLEET_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}

        train_tps, plain_tps = [], []
        for _ in range(args.rounds):
            result = run_train(folder, runs, 0, args.speed_budget)
            train_tps.append(float(result.figures["tokens_per_second"]))
            out = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(args.speed_budget)], cwd=folder,
                                 env=env, capture_output=True, text=True, check=True)
            plain_tps.append(float(out.stdout.strip().splitlines()[-1]))
        train_mean, plain_mean = statistics.mean(train_tps), statistics.mean(plain_tps)
        print(f"training speed, 1 thread, {args.rounds} alternating rounds of {args.speed_budget:g} s each")
        print(f"  {'tinygpt train.py':<28}{train_mean:10,.0f} tokens/s  {[round(t) for t in train_tps]}")
        print(f"  {'minimal PyTorch loop':<28}{plain_mean:10,.0f} tokens/s  {[round(t) for t in plain_tps]}")
        ratio = train_mean / plain_mean
        print(f"  {'ratio':<28}{ratio:10.3f}   goal >= 0.95  {'ok' if ratio >= 0.95 else 'MISSED'}")

        values = [run_train(folder, runs, seed, args.budget).metric or float("nan") for seed in range(args.seeds)]
        print(f"\nbaseline val_bpb at {args.budget:g} s on 1 thread, seeds 0..{args.seeds - 1}")
        print(f"  {'values':<28}{', '.join(f'{v:.4f}' for v in values)}")
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {'mean +- sd':<28}{statistics.mean(values):.4f} +- {sd:.4f}")


if __name__ == "__main__":
    main()
