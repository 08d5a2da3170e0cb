"""
tinygpt's fixed part: data, tokenizer, evaluation and the result block.

FROZEN: labfleet hashes this file and rejects any experiment that changes it, so
every version of train.py is measured by the same data and the same evaluation.

    python prepare.py                       # the default corpus (offline, any machine)
    python prepare.py --dataset climbmix    # autoresearch's climbmix shards (needs internet, pyarrow)
    python prepare.py --force               # rebuild even if the cache already holds the corpus

Outputs: train.bin (uint8 tokens) and meta.json in $LABFLEET_CACHE_DIR, and the two
evaluation splits, val.bin and holdout.bin, in $LABFLEET_EVAL_DIR: labfleet gives that
folder to setup and to the frozen evaluator (evaluate.py), never to the run. By hand
both default to ~/.cache/labfleet-tinygpt. Running it again is a no-op.

What train.py uses: VOCAB_SIZE, load_split("train"), get_batch(), evaluate_bpb(), print_summary().
Under labfleet, evaluate_bpb() does not measure anything itself: it serves the model's
logits to evaluate.py, a separate frozen process that owns the evaluation data.
"""

import argparse
import hashlib
import json
import math
import os
import socket
import struct
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- constants

VOCAB_SIZE = 256  # byte-level: every byte is a token, so bits per token = bits per byte
VAL_FRACTION = 0.10  # share of files (by path hash) that go to validation
HOLDOUT_FRACTION = 0.10  # the next share: the holdout split, measured only on kept versions
EVAL_TOKENS = 65_536  # the fixed validation slice evaluate_bpb measures
EVAL_BATCH = 16  # sequences per evaluation forward pass
SEPARATOR = b"\n\n# ---- file ----\n\n"
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{:05d}.parquet"
CLIMBMIX_SHARDS = 2  # training shards 0..N-1 (~100 MB of text each)
CLIMBMIX_VAL_SHARD = 6542  # the last shard, pinned for validation as in autoresearch
CLIMBMIX_HOLDOUT_SHARD = 6541  # the one before it, pinned for the holdout
EVAL_SPLITS = ("val", "holdout")  # written to the evaluator's folder, never read by train.py


def cache_dir() -> Path:
    path = Path(os.environ.get("LABFLEET_CACHE_DIR") or Path.home() / ".cache" / "labfleet-tinygpt")
    path.mkdir(parents=True, exist_ok=True)
    return path


def eval_dir() -> Path:
    """The evaluation splits' folder: labfleet's evaluator-only folder, or the cache by hand."""
    if os.environ.get("LABFLEET_EVAL_DIR"):
        path = Path(os.environ["LABFLEET_EVAL_DIR"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir()


def split_dir(split: str) -> Path:
    return eval_dir() if split in EVAL_SPLITS else cache_dir()


# --------------------------------------------------------------------------- corpora


def _share(name: str) -> float:
    """Where a document's name hashes to in [0, 1): the deterministic split key."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation(name: str) -> bool:
    """Deterministic split by a hash of the document's name (a path relative to its root)."""
    return _share(name) < VAL_FRACTION


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

    for index in [*range(CLIMBMIX_SHARDS), CLIMBMIX_VAL_SHARD, CLIMBMIX_HOLDOUT_SHARD]:
        path = cache_dir() / f"shard_{index:05d}.parquet"
        if not path.exists():
            download(CLIMBMIX_URL.format(index), path)
        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        for row, text in enumerate(texts):
            yield f"shard_{index:05d}/{row}", text.encode("utf-8", errors="replace")


def split_of(dataset: str, name: str) -> str:
    """Which split a document goes to. Deterministic: by path hash, or by pinned shard."""
    if dataset == "climbmix":
        if name.startswith(f"shard_{CLIMBMIX_VAL_SHARD:05d}/"):
            return "val"
        return "holdout" if name.startswith(f"shard_{CLIMBMIX_HOLDOUT_SHARD:05d}/") else "train"
    share = _share(name)
    if share < VAL_FRACTION:
        return "val"
    return "holdout" if share < VAL_FRACTION + HOLDOUT_FRACTION else "train"


def build(dataset: str, force: bool = False) -> dict:
    """Write train.bin and meta.json into the cache, val.bin and holdout.bin into the
    evaluator's folder; a no-op if they are there."""
    out = cache_dir()
    meta_path = out / "meta.json"
    names = ("train", "val", "holdout")
    if not force and meta_path.exists() and all((split_dir(s) / f"{s}.bin").exists() for s in names):
        meta = json.loads(meta_path.read_text())
        if meta.get("dataset") == dataset:
            return meta
    documents = {"stdlib": stdlib_documents, "climbmix": climbmix_documents}[dataset]()
    splits = {s: bytearray() for s in names}
    counts = {s: 0 for s in names}
    for name, data in documents:
        split = split_of(dataset, name)
        splits[split] += data + SEPARATOR
        counts[split] += 1
    for split, data in splits.items():  # temp file + rename: a reader never sees half a file
        tmp = split_dir(split) / f"{split}.bin.tmp"
        np.frombuffer(bytes(data), dtype=np.uint8).tofile(tmp)
        os.replace(tmp, split_dir(split) / f"{split}.bin")
    meta = {"dataset": dataset, "vocab_size": VOCAB_SIZE, "documents": counts,
            "tokens": {k: len(v) for k, v in splits.items()}}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return meta


# --------------------------------------------------------------------------- data for training


def load_split(split: str) -> np.ndarray:
    """The tokens of a split, memory-mapped (run `python prepare.py` first)."""
    path = split_dir(split) / f"{split}.bin"
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


def bpb_of(nats: float, tokens: int) -> float:
    """Byte-level tokens: one token is one byte, so nats/token / ln 2 = bits per byte."""
    return nats / tokens / math.log(2)


def eval_windows(data: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed evaluation slice as (inputs, next-token targets), each (n_seq, seq_len)."""
    n_seq = max(1, min(EVAL_TOKENS, len(data) - 1) // seq_len)
    tokens = np.asarray(data[: n_seq * seq_len + 1], dtype=np.int64)
    return tokens[:-1].reshape(n_seq, seq_len), tokens[1:].reshape(n_seq, seq_len)


def cross_entropy_nats(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy in nats of (rows, seq, vocab) logits against (rows, seq) targets.

    float32 for the exponentials (4x faster than float64), float64 for every sum.
    """
    z = logits.astype(np.float32, copy=True)
    z -= z.max(axis=-1, keepdims=True)
    picked = np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    np.exp(z, out=z)
    log_norm = np.log(z.sum(axis=-1, dtype=np.float64))
    return float((log_norm - picked).sum(dtype=np.float64))


def evaluate_bpb(model, seq_len: int, device: str = "cpu") -> float:
    """Bits per byte on the fixed validation slice (the first EVAL_TOKENS tokens of val.bin).

    Call contract: ``model(x)`` takes int64 token ids x of shape (batch, seq_len) on
    ``device`` and returns logits of shape (batch, seq_len, VOCAB_SIZE) (any float dtype);
    logits at position t may depend only on tokens 0..t. Eval mode and no_grad (the
    model's training flag is restored). Under labfleet the frozen evaluator
    (evaluate.py, its own process) sends the input windows, scores the logits against
    targets this process never sees, checks causality, and returns the value; by hand
    it is measured here. The value is also kept for print_summary().
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fd = os.environ.get("LABFLEET_EVAL_FD")
            value = _serve(model, seq_len, device, int(fd)) if fd else _evaluate_here(model, seq_len, device)
    finally:
        model.train(was_training)
    _LAST_EVAL["value"] = value
    return value


def _logits(model, x: np.ndarray, device: str) -> np.ndarray:
    import torch

    logits = model(torch.from_numpy(x.astype(np.int64)).to(device)).float()
    return logits.cpu().numpy()


def _evaluate_here(model, seq_len: int, device: str) -> float:
    x_all, y_all = eval_windows(load_split("val"), seq_len)
    nats = sum(cross_entropy_nats(_logits(model, x_all[i : i + EVAL_BATCH], device), y_all[i : i + EVAL_BATCH])
               for i in range(0, len(x_all), EVAL_BATCH))
    return bpb_of(nats, x_all.size)


# The wire between the run and the frozen evaluator (a socket pair labfleet sets up):
#   run -> evaluator   HELLO + uint32 seq_len
#   evaluator -> run   uint32 rows, uint32 seq; rows*seq uint8 tokens   (rows = 0: done, then a float64)
#   run -> evaluator   rows*seq*VOCAB_SIZE float32 logits
HELLO = b"TGPT"
_HEADER = struct.Struct("<II")


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Exactly n bytes, received in place (the logits are megabytes: no chunk joins)."""
    buf, got = bytearray(n), 0
    view = memoryview(buf)
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if not k:
            raise EOFError(f"the other side closed the connection ({got} of {n} bytes)")
        got += k
    return buf


def _serve(model, seq_len: int, device: str, fd: int) -> float:
    """Answer the evaluator's windows with the model's logits until it sends the result."""
    with socket.socket(fileno=fd) as sock:
        sock.sendall(HELLO + struct.pack("<I", seq_len))
        while True:
            rows, seq = _HEADER.unpack(recv_exact(sock, _HEADER.size))
            if rows == 0:
                return struct.unpack("<d", recv_exact(sock, 8))[0]
            x = np.frombuffer(recv_exact(sock, rows * seq), dtype=np.uint8).reshape(rows, seq)
            sock.sendall(np.ascontiguousarray(_logits(model, x, device), dtype=np.float32).tobytes())


# --------------------------------------------------------------------------- the result block


def print_summary(figures: dict) -> None:
    """Print the `---` block: aligned `key: value` lines, the metric first.

    The val_bpb value is the last evaluate_bpb() result, never a figure from the caller
    (a "val_bpb" key in ``figures`` is ignored). Under labfleet the metric counted is the
    one the frozen evaluator reports to the harness; this line is for people reading the log.
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
    sys.stdout.flush()


# --------------------------------------------------------------------------- main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build tinygpt's corpus in $LABFLEET_CACHE_DIR.")
    parser.add_argument("--dataset", choices=["stdlib", "climbmix"], default="stdlib")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache holds this corpus")
    args = parser.parse_args()
    meta = build(args.dataset, force=args.force)
    print(f"{meta['dataset']}: {meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val / "
          f"{meta['tokens']['holdout']:,} holdout bytes from {sum(meta['documents'].values()):,} documents "
          f"in {cache_dir()}")
