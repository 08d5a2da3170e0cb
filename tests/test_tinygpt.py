"""The bundled tinygpt target, trained for real through the harness (tiny budgets)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from labfleet import harness, scaffold
from labfleet.harness import Outcome, RunRequest, run_experiment
from labfleet.target import knob_patch, load_target

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
