"""
tinygpt's evaluator. FROZEN: it measures every version of train.py the same way.

labfleet starts it beside the run, in its own process (never the run's child), with
LABFLEET_EVAL_FD (one end of a socket pair; the run holds the other) and
LABFLEET_EVAL_DIR (the evaluation splits, a folder the run is never given). It

1. waits for the run's hello: train.py calls prepare.evaluate_bpb() after training;
2. sends one batch of probe windows first: evaluation windows, chosen at random, whose
   tokens after a random position t are replaced by random tokens; then every genuine
   window of the fixed validation slice, in order (and, with LABFLEET_HOLDOUT=1, the
   holdout slice: that value is never sent to the run);
3. scores the returned logits against next-token targets the run never receives;
4. checks causality: a probe window's logits up to t must equal the genuine window's.
   A model whose logits at t move when later tokens change reads the future: the block
   then carries `suspect:` and labfleet never counts the run;
5. sends the run its val_bpb (for its own log) and prints its `---` block to labfleet
   through a pipe only the harness reads.

    python evaluate.py      # under labfleet only
"""

import math
import os
import socket
import struct
import sys
import time

import numpy as np

import prepare

CAUSAL_TOLERANCE = 1e-3  # largest allowed change of a logit, relative to max(1, largest |logit|)
MAX_SEQ_LEN = 8192


def ask(sock: socket.socket, x: np.ndarray) -> np.ndarray:
    """Send windows (rows, seq) of tokens; the model's logits (rows, seq, VOCAB_SIZE) come back."""
    rows, seq = x.shape
    sock.sendall(prepare._HEADER.pack(rows, seq) + x.astype(np.uint8).tobytes())
    raw = prepare.recv_exact(sock, rows * seq * prepare.VOCAB_SIZE * 4)
    return np.frombuffer(raw, dtype=np.float32).reshape(rows, seq, prepare.VOCAB_SIZE)


def score(sock: socket.socket, x_all: np.ndarray, y_all: np.ndarray, keep: dict[int, int]):
    """Summed nats over all windows, and the logits of the windows in ``keep`` (row -> cut)."""
    nats, kept = 0.0, {}
    for i in range(0, len(x_all), prepare.EVAL_BATCH):
        logits = ask(sock, x_all[i : i + prepare.EVAL_BATCH])
        nats += prepare.cross_entropy_nats(logits, y_all[i : i + prepare.EVAL_BATCH])
        for row in range(i, i + len(logits)):
            if row in keep:
                kept[row] = logits[row - i, : keep[row] + 1].copy()
    return nats, kept


def main() -> int:
    sock = socket.socket(fileno=int(os.environ["LABFLEET_EVAL_FD"]))
    try:
        hello = prepare.recv_exact(sock, 8)
    except EOFError:
        print("the run ended without handing its model to the evaluator (prepare.evaluate_bpb)")
        return 1
    if hello[:4] != prepare.HELLO:
        print("the run spoke something other than the evaluator's protocol")
        return 1
    started = time.perf_counter()  # evaluation time: from the run's hello to the result
    (seq_len,) = struct.unpack("<I", hello[4:])
    if not 1 <= seq_len <= MAX_SEQ_LEN:
        print(f"sequence length {seq_len} is outside 1..{MAX_SEQ_LEN}")
        return 1
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # unpredictable to the run
    x_all, y_all = prepare.eval_windows(prepare.load_split("val"), seq_len)

    # the probe goes first, so a model cannot recognise a probe as a window it has already seen
    rows = rng.choice(len(x_all), size=min(prepare.EVAL_BATCH, len(x_all)), replace=False)
    cuts = rng.integers(0, max(1, seq_len - 1), size=len(rows))
    probe = x_all[rows].copy()
    for i, cut in enumerate(cuts):
        probe[i, cut + 1 :] = rng.integers(0, prepare.VOCAB_SIZE, size=seq_len - cut - 1)
    try:
        probe_logits = ask(sock, probe)
        nats, genuine = score(sock, x_all, y_all, dict(zip(rows.tolist(), cuts.tolist())))
        value = prepare.bpb_of(nats, x_all.size)
        holdout = None
        if os.environ.get("LABFLEET_HOLDOUT") == "1":
            hx, hy = prepare.eval_windows(prepare.load_split("holdout"), seq_len)
            holdout = prepare.bpb_of(score(sock, hx, hy, {})[0], hx.size)
        sock.sendall(prepare._HEADER.pack(0, 0) + struct.pack("<d", value))
    except (EOFError, ConnectionError, ValueError) as err:
        print(f"the run stopped answering the evaluator: {err}")
        return 1
    worst, where = 0.0, (0, 0)
    for i, (row, cut) in enumerate(zip(rows.tolist(), cuts.tolist())):
        a, b = probe_logits[i, : cut + 1], genuine[row]
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue  # a non-finite model fails on its metric
        change = float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))
        if change > worst:
            worst, where = change, (row, cut)
    print("---")
    print(f"{'val_bpb:':<20}{value:.6f}")
    if holdout is not None:
        print(f"{'holdout_bpb:':<20}{holdout:.6f}")
    print(f"{'eval_seconds:':<20}{time.perf_counter() - started:.2f}")
    if worst > CAUSAL_TOLERANCE or math.isnan(worst):
        print(f"{'suspect:':<20}not causal: logits up to position {where[1]} of window {where[0]} changed by "
              f"{worst:.3g} (relative) when only later tokens changed")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
