"""A target of our own shaped like karpathy/nanoGPT, for tests that bring "any training script".

Like nanoGPT's character-level Shakespeare setup: ``data/toy/prepare.py`` writes
``train.bin``, ``val.bin`` and ``meta.json`` beside itself (gitignored), ``train.py``
reads ``data/<dataset>/`` relative to the working directory (a missing file crashes it
with FileNotFoundError, as nanoGPT does), hyperparameters are lower-case globals of
``config/train_toy.py`` read through ``configurator.py`` (``exec`` of the config file,
then ``--key=value`` overrides), and the result is a log line, not a ``---`` block::

    step 20: train loss 2.4410, val loss 2.4987

No torch: the "loss" is a smooth function of the knobs plus the data's checksum, so a
run that reads other data (or none) shows it in the metric.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PREPARE = '''\
"""Prepare the toy dataset: train.bin, val.bin and meta.json beside this file. FROZEN."""
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
text = ("to be or not to be, that is the question. " * 400).encode()
n = len(text) * 9 // 10
with open(os.path.join(here, "train.bin"), "wb") as f:
    f.write(text[:n])
with open(os.path.join(here, "val.bin"), "wb") as f:
    f.write(text[n:])
with open(os.path.join(here, "meta.json"), "w") as f:
    json.dump({"vocab_size": len(set(text)), "train": n, "val": len(text) - n}, f)
# a trace of every setup, for tests: how often it ran on this host
cache = os.environ.get("LABFLEET_CACHE_DIR")
if cache:
    with open(os.path.join(cache, "setups.txt"), "a") as f:
        f.write("setup\\n")
print(f"train has {n:,} tokens, val has {len(text) - n:,} tokens")
'''

CONFIGURATOR = '''\
"""nanoGPT-style configuration: exec the config file, then --key=value overrides. FROZEN."""
import sys
from ast import literal_eval

for arg in sys.argv[1:]:
    if "=" not in arg:
        assert not arg.startswith("--")
        print(f"Overriding config with {arg}:")
        exec(open(arg).read())
    else:
        assert arg.startswith("--")
        key, val = arg.split("=", 1)
        key = key[2:]
        if key in globals():
            try:
                attempt = literal_eval(val)
            except (SyntaxError, ValueError):
                attempt = val
            assert type(attempt) == type(globals()[key]), f"{key}: {attempt!r}"
            print(f"Overriding: {key} = {attempt}")
            globals()[key] = attempt
        else:
            raise ValueError(f"Unknown config key: {key}")
'''

TRAIN = '''\
"""Toy training script in nanoGPT's shape. FROZEN."""
import math
import os
import time

import model

dataset = "toy"
learning_rate = 6e-4
n_layer = 12
max_iters = 10
eval_interval = 5
device = "cpu"
exec(open("configurator.py").read())  # overrides from the config file and the command line

data_dir = os.path.join("data", dataset)
train_data = open(os.path.join(data_dir, "train.bin"), "rb").read()
val_data = open(os.path.join(data_dir, "val.bin"), "rb").read()
checksum = sum(val_data) % 1000 / 1000
print(f"training on {device} with {len(train_data)} tokens")
base = 2.0 + 0.1 * (math.log10(learning_rate) + 2.5) ** 2 + 0.01 * n_layer + model.bias() + checksum
for it in range(max_iters + 1):
    t0 = time.time()
    loss = base + 1.0 / (1 + it)
    if it % eval_interval == 0 or it == max_iters:
        print(f"step {it}: train loss {loss - 0.05:.4f}, val loss {loss:.4f}")
    print(f"iter {it}: loss {loss:.4f}, time {1000 * (time.time() - t0) + 1.5:.2f}ms")
'''

MODEL = '''\
"""The model. EDITABLE."""


def bias():
    return 0.0
'''

CONFIG = '''\
# train a toy character-level model
out_dir = "out-toy"
eval_interval = 5
max_iters = 20
learning_rate = 1e-3  # with baby networks can afford to go a bit higher
n_layer = 2
'''

GITIGNORE = """\
__pycache__/
*.bin
*.pkl
meta.json
"""

TOML = """\
[target]
name = "nanolike"
editable = ["config/train_toy.py", "model.py"]
frozen = ["train.py", "configurator.py", "data/toy/prepare.py"]
setup = "python data/toy/prepare.py"
run = "python train.py config/train_toy.py --device=cpu"
metric = "val_loss"
metric_pattern = 'step \\d+: train loss [0-9.]+, val loss ([0-9.]+)'
direction = "minimize"
budget_seconds = 5
timeout_seconds = 60

[target.figures]
iter_ms = 'iter \\d+: loss [0-9.]+, time ([0-9.]+)ms'
steps = 'step (\\d+):'

[knobs]
learning_rate = { file = "config/train_toy.py", low = 1e-4, high = 1e-1, log = true, group = "optimizer" }
n_layer = { file = "config/train_toy.py", choices = [1, 2, 4], group = "architecture" }
"""


def make_nanolike(folder: Path, *, toml: str = TOML, model: str = MODEL) -> Path:
    """The fixture target, committed, in ``folder``."""
    files = {
        "labfleet.toml": toml, ".gitignore": GITIGNORE, "train.py": TRAIN, "configurator.py": CONFIGURATOR,
        "model.py": model, "config/train_toy.py": CONFIG, "data/toy/prepare.py": PREPARE,
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "nanolike"]):
        subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)
    return folder


def val_loss(learning_rate: float = 1e-3, n_layer: int = 2, max_iters: int = 20) -> float:
    """The metric the fixture prints for these settings, with the prepared data."""
    import math

    text = ("to be or not to be, that is the question. " * 400).encode()
    val = text[len(text) * 9 // 10:]
    base = 2.0 + 0.1 * (math.log10(learning_rate) + 2.5) ** 2 + 0.01 * n_layer + sum(val) % 1000 / 1000
    return round(base + 1.0 / (1 + max_iters), 4)
