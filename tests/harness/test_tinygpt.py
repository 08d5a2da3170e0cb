"""The bundled tinygpt target, trained for real through the harness (tiny budgets)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from labfleet import harness, scaffold
from labfleet.harness import Outcome, RunRequest, run_experiment
from labfleet.target import knob_patch, load_target, unified_diff

FIGURES = {"training_seconds", "total_seconds", "num_steps", "tokens_seen", "tokens_per_second", "num_params", "peak_memory_mb"}


@pytest.fixture(scope="module")
def tinygpt(tmp_path_factory: pytest.TempPathFactory, tinygpt_cache: Path) -> Path:
    folder = tmp_path_factory.mktemp("lab") / "tinygpt"
    scaffold.init_bundled(folder)
    harness.prepare(folder, cache_root=tinygpt_cache)
    return folder


def train(folder: Path, cache: Path, run_dir: Path, **kwargs) -> harness.RunResult:
    kwargs.setdefault("budget_seconds", 3)
    return run_experiment(RunRequest(target_dir=folder, run_dir=run_dir, cache_root=cache, **kwargs))


def test_short_run_is_ok_with_a_finite_signed_metric(tinygpt, tinygpt_cache, tmp_path):
    result = train(tinygpt, tinygpt_cache, tmp_path / "run", seed=1)
    assert result.outcome == Outcome.OK, (result.reason, result.log_tail)
    assert result.metric is not None and math.isfinite(result.metric)
    assert 1.0 < result.metric < 8.0  # bits per byte of an early byte-level model
    assert FIGURES <= set(result.figures)
    assert "mfu_percent" not in result.figures  # CUDA only
    assert result.figures["training_seconds"] == pytest.approx(3, abs=0.5)
    assert result.figures["num_steps"] > 10
    assert result.setup_cached


def test_knob_experiment_changes_the_result(tinygpt, tinygpt_cache, tmp_path):
    target = load_target(tinygpt)
    lr = target.read_knobs()["LEARNING_RATE"]
    patch = knob_patch(target, {"LEARNING_RATE": lr * 3})
    base = train(tinygpt, tinygpt_cache, tmp_path / "base")
    changed = train(tinygpt, tinygpt_cache, tmp_path / "lr", patch=patch)
    assert base.outcome == changed.outcome == Outcome.OK
    assert changed.flags == []
    assert changed.metric != base.metric


def test_train_py_never_names_the_metric():
    """The harness flags patches that mention the metric; the starting point must not."""
    train_py = (scaffold.bundled_path("tinygpt") / "train.py").read_text()
    assert "val_bpb" not in train_py


@pytest.mark.slow
def test_one_knob_sweep_beats_the_default_by_005(tinygpt, tinygpt_cache, tmp_path):
    """Defaults are a starting point, not the optimum: research has something to find."""
    target = load_target(tinygpt)
    default = train(tinygpt, tinygpt_cache, tmp_path / "default", budget_seconds=30)
    better = train(tinygpt, tinygpt_cache, tmp_path / "lr", budget_seconds=30,
                   patch=knob_patch(target, {"LEARNING_RATE": 3e-3}))
    assert default.outcome == better.outcome == Outcome.OK
    assert better.metric < default.metric - 0.05


# ---------------------------------------------------------------- the frozen evaluator


def edited(folder: Path, old: str, new: str) -> str:
    """A patch replacing ``old`` (which must occur once) by ``new`` in tinygpt's train.py."""
    source = (folder / "train.py").read_text()
    assert source.count(old) == 1, old
    return unified_diff("train.py", source, source.replace(old, new))


EVAL_CALL = "bpb = prepare.evaluate_bpb(model, SEQ_LEN, DEVICE)"


def test_holdout_is_measured_only_when_asked_and_only_the_harness_sees_it(tinygpt, tinygpt_cache, tmp_path):
    # the run also records what it can reach: no evaluation folder, no validation file
    probe = (
        "import glob, json\n"
        "json.dump({'eval_dir': os.environ.get('LABFLEET_EVAL_DIR'),\n"
        "           'val_files': glob.glob(os.path.join(os.environ['LABFLEET_CACHE_DIR'], '**', '*.bin'),"
        " recursive=True)}, open('reach.json', 'w'))\n" + EVAL_CALL
    )
    result = train(tinygpt, tinygpt_cache, tmp_path / "h", budget_seconds=1, holdout=True,
                   patch=edited(tinygpt, EVAL_CALL, probe))
    assert result.outcome == Outcome.OK, (result.reason, result.log_tail)
    assert result.holdout is not None and 1.0 < result.holdout < 8.0
    assert result.holdout != result.metric
    log = Path(result.log_path).read_text()
    for text in (log, result.log_tail, json.dumps(result.figures), result.reason):
        assert "holdout" not in text and f"{result.holdout:.6f}" not in text
    reach = json.loads((tmp_path / "h" / "src" / "reach.json").read_text())
    assert reach["eval_dir"] is None
    assert [Path(p).name for p in reach["val_files"]] == ["train.bin"]
    assert "eval_seconds" in result.figures
    plain = train(tinygpt, tinygpt_cache, tmp_path / "plain", budget_seconds=1)
    assert plain.outcome == Outcome.OK and plain.holdout is None


def test_a_model_that_reads_the_next_token_is_suspect(tinygpt, tinygpt_cache, tmp_path):
    peek = ("logits = self.head(self.ln_f(x))\n"
            "        nxt = torch.roll(idx, -1, dims=1)  # the token after each position: not causal\n"
            "        return logits + 30.0 * F.one_hot(nxt, logits.size(-1)).to(logits.dtype)")
    patch = edited(tinygpt, "return self.head(self.ln_f(x))", peek)
    result = train(tinygpt, tinygpt_cache, tmp_path / "peek", budget_seconds=1, patch=patch)
    assert result.outcome == Outcome.SUSPECT, (result.reason, result.log_tail)
    assert "not causal" in result.reason
    assert result.metric is None


def test_monkeypatching_the_evaluation_from_train_py_changes_nothing(tinygpt, tinygpt_cache, tmp_path):
    """In one interpreter, these patches made val_bpb whatever train.py wanted; now they are inert."""
    attack = (
        "prepare.cross_entropy_nats = lambda *a, **k: 0.0\n"
        "prepare.bpb_of = lambda *a, **k: 0.01\n"
        "prepare._evaluate_here = lambda *a, **k: 0.01\n"
        "F.cross_entropy = lambda *a, **k: torch.zeros(())\n"
        "np.log = lambda x: np.zeros_like(x)\n" + EVAL_CALL + "\n"
        "print('---')\nprint('val' + '_bpb: 0.010000')"
    )
    result = train(tinygpt, tinygpt_cache, tmp_path / "mp", budget_seconds=1, patch=edited(tinygpt, EVAL_CALL, attack))
    assert result.outcome == Outcome.OK, (result.reason, result.log_tail)
    assert result.metric is not None and result.metric > 1.0  # the honest value, not 0.01


def test_a_run_that_never_hands_over_its_model_has_no_metric(tinygpt, tinygpt_cache, tmp_path):
    attack = "prepare.evaluate_bpb = lambda *a, **k: 0.01\n" + EVAL_CALL
    result = train(tinygpt, tinygpt_cache, tmp_path / "skip", budget_seconds=1,
                   patch=edited(tinygpt, EVAL_CALL, attack))
    assert result.outcome == Outcome.NO_METRIC
    assert "without handing its model" in result.reason
