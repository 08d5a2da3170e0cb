"""
tinygpt's fixed part: data, tokenizer, evaluation and the result block.

FROZEN: labfleet hashes this file and rejects any experiment that changes it, so
every version of train.py is measured by the same data and the same evaluation.

    python prepare.py                       # the default corpus (offline, any machine)
    python prepare.py --dataset climbmix    # autoresearch's climbmix shards (needs internet, pyarrow)
    python prepare.py --force               # rebuild even if the cache already holds the corpus

Outputs go to $LABFLEET_CACHE_DIR (set by labfleet; default ~/.cache/labfleet-tinygpt):
train.bin and val.bin (uint8 tokens) and meta.json. Running it again is a no-op.

What train.py uses: VOCAB_SIZE, load_split(), get_batch(), evaluate_bpb(), print_summary().
"""

import argparse
import hashlib
import hmac
import json
import math
import os
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- constants

VOCAB_SIZE = 256  # byte-level: every byte is a token, so bits per token = bits per byte
VAL_FRACTION = 0.10  # share of files (by path hash) that go to validation
EVAL_TOKENS = 65_536  # the fixed validation slice evaluate_bpb measures
EVAL_BATCH = 16  # sequences per evaluation forward pass
SEPARATOR = b"\n\n# ---- file ----\n\n"
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{:05d}.parquet"
CLIMBMIX_SHARDS = 2  # training shards 0..N-1 (~100 MB of text each)
CLIMBMIX_VAL_SHARD = 6542  # the last shard, pinned for validation as in autoresearch


def cache_dir() -> Path:
    path = Path(os.environ.get("LABFLEET_CACHE_DIR") or Path.home() / ".cache" / "labfleet-tinygpt")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- corpora


def is_validation(name: str) -> bool:
    """Deterministic split by a hash of the document's name (a path relative to its root)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VAL_FRACTION


def stdlib_documents():
    """The Python standard library's own .py sources on this machine, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            yield rel, path.read_bytes()
        except OSError:
            continue


def download(url: str, path: Path, attempts: int = 4) -> None:
    """Fetch url into path atomically (a .part file, then rename), retrying with backoff."""
    for attempt in range(attempts):
        try:
            print(f"downloading {url} ...", flush=True)
            tmp = path.with_suffix(".part")
            urllib.request.urlretrieve(url, tmp)
            os.replace(tmp, path)
            return
        except OSError as err:
            if attempt == attempts - 1:
                raise SystemExit(f"could not download {url}: {err}")
            time.sleep(2**attempt)


def climbmix_documents():
    """autoresearch's climbmix parquet shards: CLIMBMIX_SHARDS for training, the pinned
    CLIMBMIX_VAL_SHARD for validation. Downloaded once into the cache; reading needs pyarrow."""
    try:
        import pyarrow.parquet as pq  # only this option needs it
    except ImportError:
        raise SystemExit("--dataset climbmix needs pyarrow: pip install pyarrow") from None

    for index in [*range(CLIMBMIX_SHARDS), CLIMBMIX_VAL_SHARD]:
        path = cache_dir() / f"shard_{index:05d}.parquet"
        if not path.exists():
            download(CLIMBMIX_URL.format(index), path)
        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        for row, text in enumerate(texts):
            yield f"shard_{index:05d}/{row}", text.encode("utf-8", errors="replace")


def split_of(dataset: str, name: str) -> str:
    """Which split a document goes to. Deterministic: by path hash, or by pinned shard."""
    if dataset == "climbmix":
        return "val" if name.startswith(f"shard_{CLIMBMIX_VAL_SHARD:05d}/") else "train"
    return "val" if is_validation(name) else "train"


def build(dataset: str, force: bool = False) -> dict:
    """Write train.bin, val.bin and meta.json into the cache; a no-op if they are there."""
    out = cache_dir()
    meta_path = out / "meta.json"
    if not force and meta_path.exists() and all((out / f"{s}.bin").exists() for s in ("train", "val")):
        meta = json.loads(meta_path.read_text())
        if meta.get("dataset") == dataset:
            return meta
    documents = {"stdlib": stdlib_documents, "climbmix": climbmix_documents}[dataset]()
    splits = {"train": bytearray(), "val": bytearray()}
    counts = {"train": 0, "val": 0}
    for name, data in documents:
        split = split_of(dataset, name)
        splits[split] += data + SEPARATOR
        counts[split] += 1
    for split, data in splits.items():  # temp file + rename: a reader never sees half a file
        tmp = out / f"{split}.bin.tmp"
        np.frombuffer(bytes(data), dtype=np.uint8).tofile(tmp)
        os.replace(tmp, out / f"{split}.bin")
    meta = {"dataset": dataset, "vocab_size": VOCAB_SIZE, "documents": counts,
            "tokens": {k: len(v) for k, v in splits.items()}}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return meta


# --------------------------------------------------------------------------- data for training


def load_split(split: str) -> np.ndarray:
    """The tokens of a split, memory-mapped (run `python prepare.py` first)."""
    path = cache_dir() / f"{split}.bin"
    if not path.exists():
        sys.exit(f"{path} is missing: run `python prepare.py` (labfleet runs it as the target's setup)")
    return np.memmap(path, dtype=np.uint8, mode="r")


def get_batch(data: np.ndarray, batch_size: int, seq_len: int, generator: np.random.Generator):
    """Random windows: inputs x and next-token targets y, as int64 numpy arrays."""
    starts = generator.integers(0, len(data) - seq_len - 1, size=batch_size)
    x = np.stack([data[s : s + seq_len] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1 : s + seq_len + 1] for s in starts]).astype(np.int64)
    return x, y


# --------------------------------------------------------------------------- evaluation

_LAST_EVAL = {"value": None}


def evaluate_bpb(model, seq_len: int, device: str = "cpu") -> float:
    """Bits per byte on the fixed validation slice (the first EVAL_TOKENS tokens of val.bin).

    Call contract: ``model(x)`` takes int64 token ids x of shape (batch, seq_len) on
    ``device`` and returns logits of shape (batch, seq_len, VOCAB_SIZE) (any float dtype).
    Deterministic: the same slice every time, no sampling, eval mode and no_grad (the
    model's training flag is restored). The value is also kept here for print_summary().
    """
    import torch
    import torch.nn.functional as F

    data = load_split("val")
    n_seq = max(1, min(EVAL_TOKENS, len(data) - 1) // seq_len)
    tokens = torch.from_numpy(np.asarray(data[: n_seq * seq_len + 1], dtype=np.int64))
    x_all, y_all = tokens[:-1].view(n_seq, seq_len), tokens[1:].view(n_seq, seq_len)
    was_training = model.training
    model.eval()
    total_nats = 0.0
    with torch.no_grad():
        for i in range(0, n_seq, EVAL_BATCH):
            x, y = x_all[i : i + EVAL_BATCH].to(device), y_all[i : i + EVAL_BATCH].to(device)
            logits = model(x).float()
            total_nats += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
    model.train(was_training)
    # byte-level tokens: one token is one byte, so nats/token / ln 2 = bits per byte
    value = total_nats / (n_seq * seq_len) / math.log(2)
    _LAST_EVAL["value"] = value
    return value


# --------------------------------------------------------------------------- the result block

_SIGNING = {"key": None}


def _set_signing_key(key) -> None:
    """Called by launch.py (frozen) before train.py runs; train.py never sees the key."""
    _SIGNING["key"] = key


def print_summary(figures: dict) -> None:
    """Print the `---` block: aligned `key: value` lines, the metric first.

    The val_bpb value is the last evaluate_bpb() result, never a figure from the caller
    (a "val_bpb" key in ``figures`` is ignored). With a signing key from launch.py, a
    `signature:` line follows: HMAC-SHA256 over "val_bpb=<the printed value>".
    """
    value = _LAST_EVAL["value"]
    value_text = "nan" if value is None else f"{value:.6f}"
    lines = {"val_bpb": value_text}
    for key, figure in figures.items():
        if key in ("val_bpb", "signature"):
            continue
        lines[key] = f"{figure:.2f}" if isinstance(figure, float) else str(figure)
    print("---")
    for key, text in lines.items():
        print(f"{key + ':':<20}{text}")
    if _SIGNING["key"]:
        mac = hmac.new(bytes.fromhex(_SIGNING["key"]), f"val_bpb={value_text}".encode(), hashlib.sha256)
        print(f"{'signature:':<20}{mac.hexdigest()}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build tinygpt's corpus in $LABFLEET_CACHE_DIR.")
    parser.add_argument("--dataset", choices=["stdlib", "climbmix"], default="stdlib")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache holds this corpus")
    args = parser.parse_args()
    meta = build(args.dataset, force=args.force)
    print(f"{meta['dataset']}: {meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val bytes "
          f"from {meta['documents']['train'] + meta['documents']['val']:,} documents in {cache_dir()}")
