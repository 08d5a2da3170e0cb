"""
tinygpt: a small GPT trained for a fixed time budget. EDITABLE: this is the experiment.

labfleet runs it as `python train.py` with LABFLEET_BUDGET_SECONDS,
LABFLEET_SEED, LABFLEET_DEVICE and LABFLEET_THREADS set; by hand,
`python prepare.py && python train.py` works too. It trains for exactly the budget
(evaluation and start-up not counted), evaluates bits per byte on the fixed
validation slice (prepare.evaluate_bpb), and prints the result block.
"""

import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# --------------------------------------------------------------------------- hyperparameters

# model
N_LAYER = 2  # transformer blocks
N_HEAD = 2  # attention heads per block
D_MODEL = 64  # embedding width
SEQ_LEN = 128  # context length in tokens (bytes)
DROPOUT = 0.0

# optimizer
LEARNING_RATE = 1e-3  # peak AdamW learning rate
WEIGHT_DECAY = 0.1
BETA2 = 0.99
GRAD_CLIP = 0.0  # max gradient norm; 0 disables (clipping costs ~20% of a CPU step at this size)
WARMUP_FRACTION = 0.05  # share of the time budget spent warming up the learning rate
FINAL_LR_FRACTION = 0.1  # learning rate at the end, as a share of the peak

# batch
BATCH_SIZE = 8  # sequences per step

# speed
USE_COMPILE = False  # torch.compile on CUDA (costs ~20 s of compilation: worth it for long budgets)

# --------------------------------------------------------------------------- the run's settings (from labfleet)

BUDGET_SECONDS = float(os.environ.get("LABFLEET_BUDGET_SECONDS", "30"))
SEED = int(os.environ.get("LABFLEET_SEED", "0"))
DEVICE = os.environ.get("LABFLEET_DEVICE") or (
    "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
)
THREADS = int(os.environ.get("LABFLEET_THREADS", "1"))

# --------------------------------------------------------------------------- model


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
        self.proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, N_HEAD, c // N_HEAD).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=DROPOUT if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(prepare.VOCAB_SIZE, D_MODEL)
        self.pos = nn.Embedding(SEQ_LEN, D_MODEL)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, prepare.VOCAB_SIZE, bias=False)
        self.head.weight = self.tok.weight  # tied embeddings
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------- setup

start_time = time.time()
torch.manual_seed(SEED)
rng = np.random.default_rng(SEED)
cuda = DEVICE.startswith("cuda")
mps = DEVICE == "mps"  # Apple silicon: float32 (no autocast), no fused optimizer, no compile
if cuda and not torch.cuda.is_available():
    sys.exit(f"LABFLEET_DEVICE={DEVICE} but torch sees no CUDA device")
if mps and not torch.backends.mps.is_available():
    sys.exit("LABFLEET_DEVICE=mps but torch sees no MPS device (Apple silicon, macOS 12.3+)")
if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
elif mps:
    torch.set_num_threads(THREADS)
    autocast = torch.autocast("cpu", enabled=False)  # a no-op context: MPS trains in float32
else:
    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)  # denormals slow high-learning-rate runs by ~40% on CPU
    autocast = torch.autocast("cpu", enabled=False)

train_data = prepare.load_split("train")
model = GPT().to(DEVICE)
num_params = sum(p.numel() for p in model.parameters())
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LEARNING_RATE, betas=(0.9, BETA2), fused=cuda,
)
step_model = torch.compile(model) if USE_COMPILE and cuda else model


def lr_at(progress: float) -> float:
    """Linear warmup, then cosine decay to FINAL_LR_FRACTION, by share of the time budget."""
    if progress < WARMUP_FRACTION:
        return LEARNING_RATE * (progress / WARMUP_FRACTION)
    t = min(1.0, (progress - WARMUP_FRACTION) / max(1e-9, 1 - WARMUP_FRACTION))
    return LEARNING_RATE * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


def sync() -> None:
    if cuda:
        torch.cuda.synchronize()
    elif mps:
        torch.mps.synchronize()


# --------------------------------------------------------------------------- training loop

step, tokens_seen, training_seconds = 0, 0, 0.0
model.train()
while training_seconds < BUDGET_SECONDS:
    t0 = time.perf_counter()
    x, y = prepare.get_batch(train_data, BATCH_SIZE, SEQ_LEN, rng)
    x, y = torch.from_numpy(x).to(DEVICE, non_blocking=True), torch.from_numpy(y).to(DEVICE, non_blocking=True)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(training_seconds / BUDGET_SECONDS)
    with autocast:
        logits = step_model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if GRAD_CLIP > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    step += 1
    tokens_seen += x.numel()
    if step % 100 == 0 or step == 1:
        loss_value = loss.item()  # a sync point: only every 100 steps
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"step {step}: loss {loss_value}")
            print("FAIL")
            sys.exit(1)
        print(f"step {step:6d} | loss {loss_value:.4f} | lr {lr_at(training_seconds / BUDGET_SECONDS):.2e} "
              f"| {training_seconds:5.1f}/{BUDGET_SECONDS:g} s", flush=True)
    sync()
    training_seconds += time.perf_counter() - t0

# --------------------------------------------------------------------------- evaluation and summary

final_loss = loss.item()
if not math.isfinite(final_loss) or final_loss > 100:
    print(f"final loss {final_loss}")
    print("FAIL")
    sys.exit(1)
bpb = prepare.evaluate_bpb(model, SEQ_LEN, DEVICE)
if not math.isfinite(bpb):
    print("FAIL")
    sys.exit(1)

tokens_per_second = tokens_seen / training_seconds
figures = {
    "training_seconds": training_seconds,
    "total_seconds": time.time() - start_time,
    "num_steps": step,
    "tokens_seen": tokens_seen,
    "tokens_per_second": tokens_per_second,
    "num_params": num_params,
}
if cuda:
    figures["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    # 6N flops per token for the weights, plus attention (12 * layers * d * seq per token)
    flops_per_token = 6 * num_params + 12 * N_LAYER * D_MODEL * SEQ_LEN
    name = torch.cuda.get_device_name()
    peak = next((f for key, f in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12)) if key in name), None)
    if peak:
        figures["mfu_percent"] = 100 * flops_per_token * tokens_per_second / peak
elif mps:  # MPS has no peak counter: the driver's allocation at the end
    figures["mps_memory_mb"] = torch.mps.driver_allocated_memory() / 2**20
else:
    figures["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
prepare.print_summary(figures)
