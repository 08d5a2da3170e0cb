"""A scripted model for the benches: a fixed list of real structural ideas for tinygpt's train.py.

It answers through ``tests/fake_llm.py``'s local server (the real Anthropic SDK and
the LLM researcher's real client code run): every call gets the next k ideas of the
list as search/replace edits, so the hybrid and ideas researchers run offline.
Some ideas are good at small CPU budgets (fewer FLOPs per step buy more steps; a
zero-initialised residual branch), some bad (dropout, no positional embedding).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fake_llm import FakeLLM, Reply, Request  # noqa: E402

# (name, description, hypothesis, search, replace): each search text occurs once in train.py and no two ideas
# touch the same lines, so any combination of them applies.
IDEAS: list[tuple[str, str, str, str, str]] = [
    ("MLP_2X", "MLP hidden width 2x instead of 4x", "half the MLP FLOPs buys more steps in a fixed budget",
     "nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL)",
     "nn.Linear(D_MODEL, 2 * D_MODEL), nn.GELU(), nn.Linear(2 * D_MODEL, D_MODEL)"),
    ("DROPOUT", "dropout 0.1", "regularisation against overfitting",
     "DROPOUT = 0.0", "DROPOUT = 0.1"),
    ("SEQ_64", "context 64 instead of 128", "shorter sequences make attention cheaper: more steps",
     "SEQ_LEN = 128  # context length in tokens (bytes)", "SEQ_LEN = 64  # context length in tokens (bytes)"),
    ("NO_POS", "no learned positional embedding", "causal attention can infer position by itself",
     "x = self.tok(idx) + self.pos(torch.arange(idx.size(1), device=idx.device))", "x = self.tok(idx)"),
    ("ZERO_PROJ", "zero-initialise the residual output projections", "blocks start as the identity: faster early progress",
     "        self.apply(self._init)\n", "        self.apply(self._init)\n"
     "        for block in self.blocks:\n            nn.init.zeros_(block.proj.weight)\n"),
    ("BETA2_95", "AdamW beta2 0.95", "a shorter second-moment memory adapts faster in short runs",
     "BETA2 = 0.99", "BETA2 = 0.95"),
    ("FINAL_LR_0", "decay the learning rate to zero", "annealing fully helps the final loss",
     "FINAL_LR_FRACTION = 0.1  # learning rate at the end, as a share of the peak",
     "FINAL_LR_FRACTION = 0.0  # learning rate at the end, as a share of the peak"),
    ("UNTIE", "untie the input and output embeddings", "separate matrices give the head more freedom",
     "        self.head.weight = self.tok.weight  # tied embeddings\n", ""),
]

# Ideas designed to interact, for the code-idea factorial: LR_UP and LR_DOWN scale the same learning rate
# (x10 and x0.1: together they cancel), RELU touches the activation only.
INTERACTING: list[tuple[str, str, str, str, str]] = [
    ("LR_UP", "peak learning rate x10", "1e-3 is far below the optimum at this size",
     "LEARNING_RATE = 1e-3  # peak AdamW learning rate", "LEARNING_RATE = 1e-2  # peak AdamW learning rate"),
    ("LR_DOWN", "the schedule scaled by 0.1", "a gentler schedule (it undoes LR_UP: the pair interacts)",
     'group["lr"] = lr_at(training_seconds / BUDGET_SECONDS)',
     'group["lr"] = 0.1 * lr_at(training_seconds / BUDGET_SECONDS)'),
    ("RELU", "ReLU instead of GELU", "a cheaper activation",
     "nn.GELU()", "nn.ReLU()"),
]


def proposal(idea: tuple[str, str, str, str, str]) -> dict[str, Any]:
    name, description, hypothesis, search, replace = idea
    return {"name": name, "description": description, "hypothesis": hypothesis,
            "edits": [{"file": "train.py", "search": search, "replace": replace}]}


class ScriptedModel:
    """Hands out the ideas in order, ``k`` per call; a retry (a follow-up turn) gets the next ones."""

    def __init__(self, ideas: list[tuple[str, str, str, str, str]] = IDEAS) -> None:
        self.ideas = list(ideas)
        self.next = 0
        self.server = FakeLLM(responder=self.answer)

    def answer(self, request: Request) -> Reply:
        text = request.prompt
        match = re.search(r"Propose (\d+) ideas", text) or re.search(r"exactly these (\d+) proposal", text)
        k = int(match.group(1)) if match else 1
        picked = [self.ideas[(self.next + i) % len(self.ideas)] for i in range(k)] if self.next < len(self.ideas) else []
        self.next += k
        return Reply(proposals=[proposal(i) for i in picked])

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.close()
