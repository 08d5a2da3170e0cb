"""Metric sources: the `---` block, a log pattern (last match), a metrics file; figures; outcomes."""

from __future__ import annotations

import json
import math

import pytest

from labfleet import metrics
from labfleet.errors import ConfigError
from labfleet.harness import Outcome, RunRequest, classify, run_experiment
from labfleet.target import parse_config
from tests.conftest import make_target
from tests.nanolike import make_nanolike, val_loss

BASE = """\
[target]
name = "t"
editable = ["train.py"]
run = "python train.py"
metric = "val_loss"
budget_seconds = 1
timeout_seconds = 5
"""
NANO_LOG = """\
step 0: train loss 4.2000, val loss 4.3000
iter 0: loss 4.1000, time 120.50ms
step 50: train loss 2.9000, val loss 2.9500
iter 50: loss 2.8000, time 44.10ms
step 60: train loss 2.8276, val loss 2.7496
iter 60: loss 2.7000, time 43.90ms
"""


def spec(extra: str = "", figures: str = ""):
    return parse_config(BASE + extra + ("\n[target.figures]\n" + figures if figures else "")).target


def test_pattern_takes_the_last_match_and_figures_come_the_same_way():
    s = spec("metric_pattern = 'step \\d+: train loss [0-9.]+, val loss ([0-9.]+)'\n",
             "iter_ms = 'iter \\d+: loss [0-9.]+, time ([0-9.]+)ms'\nsteps = 'step (\\d+):'\n")
    outcome, reason, value, figures = classify(NANO_LOG, 0, s, None)
    assert (outcome, reason, value) == (Outcome.OK, "", 2.7496)
    assert figures == {"iter_ms": 43.9, "steps": 60.0}


def test_pattern_without_a_match_is_no_metric_with_the_reason():
    s = spec("metric_pattern = 'val loss ([0-9.]+)'\n")
    outcome, reason, value, _ = classify("step 0: train loss 4.2\n", 0, s, None)
    assert (outcome, value) == (Outcome.NO_METRIC, None)
    assert reason == "no line of the output matches metric_pattern 'val loss ([0-9.]+)'"


def test_pattern_nan_and_non_numbers():
    s = spec("metric_pattern = 'val loss (\\S+)'\n")
    assert classify("val loss nan\n", 0, s, None)[:2] == (Outcome.NAN, "val_loss is nan")
    assert classify("val loss inf\n", 0, s, None)[0] == Outcome.NAN
    assert classify("val loss soon\n", 0, s, None)[:2] == (Outcome.NO_METRIC, "val_loss is not a number: 'soon'")
    assert classify("val loss 1.5\nFAIL\n", 0, s, None)[0] == Outcome.NAN  # the run said FAIL
    assert classify("val loss 1.5\n", 2, s, None)[0] == Outcome.CRASHED  # a crash is a crash


@pytest.mark.parametrize("text, outcome, reason, value", [
    ('{"val_loss": 2.5, "steps": 60, "tokens_per_second": 1234.5, "note": "x"}', Outcome.OK, "", 2.5),
    ('{"val_loss": NaN}', Outcome.NAN, "val_loss is nan", None),
    ('{"val_loss": "2.25"}', Outcome.OK, "", 2.25),
    ('{"val_loss": null}', Outcome.NO_METRIC, "val_loss is not a number: 'null'", None),
    ('{"steps": 3}', Outcome.NO_METRIC, "out/metrics.json has no key 'val_loss'", None),
    ("[1, 2]", Outcome.NO_METRIC, "out/metrics.json is not a JSON object", None),
    (None, Outcome.NO_METRIC, "the run wrote no out/metrics.json", None),
])
def test_metrics_file(text, outcome, reason, value):
    s = spec('metrics_file = "out/metrics.json"\n')
    got = classify("", 0, s, None, text)
    assert got[0] == outcome and got[1] == reason
    if value is not None:
        assert got[2] == value
    if outcome == Outcome.OK and "steps" in (text or ""):
        assert got[3] == {"steps": 60.0, "tokens_per_second": 1234.5}


def test_a_broken_metrics_file_is_one_line():
    s = spec('metrics_file = "out/metrics.json"\n')
    outcome, reason, _, _ = classify("", 0, s, None, '{"val_loss": 2.')
    assert outcome == Outcome.NO_METRIC and reason.startswith("out/metrics.json is not valid JSON: ")
    assert "\n" not in reason
    huge = '{"val_loss": 1, "pad": "' + "x" * metrics.METRICS_FILE_LIMIT + '"}'
    assert classify("", 0, s, None, huge)[1] == "out/metrics.json is larger than 1 MiB"


def test_the_block_stays_the_default_and_pattern_figures_add_to_it():
    s = spec("", "peak_mb = 'peak memory ([0-9.]+) MB'\n")
    out = "peak memory 812.5 MB\n---\nval_loss: 1.25\nnum_steps: 10\n"
    outcome, _, value, figures = classify(out, 0, s, None)
    assert (outcome, value) == (Outcome.OK, 1.25)
    assert figures == {"val_loss": 1.25, "num_steps": 10.0, "peak_mb": 812.5}


@pytest.mark.parametrize("extra, message", [
    ("metric_pattern = 'val loss ([0-9.]+'\n", "target.metric_pattern: metric_pattern 'val loss ([0-9.]+' is not a valid regular expression: missing ), unterminated subpattern at position 9"),
    ("metric_pattern = 'val loss [0-9.]+'\n", "needs exactly one group (...) around the number, has 0"),
    ("metric_pattern = '(step) (\\d+)'\n", "has 2"),
    ('metric_pattern = "x (1)"\nmetrics_file = "m.json"\n', "give metric_pattern or metrics_file, not both"),
    ('metrics_file = "../m.json"\n', "must be a path relative to the target folder"),
    ('metrics_file = "train.py"\n', "metrics_file 'train.py' is a target file: the run must write it"),
    ("signed = true\nmetric_pattern = 'x (1)'\n", "signed = true needs the metric in the `---` block"),
])
def test_bad_metric_sources_fail_at_load_in_one_line(extra, message):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + extra)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("figures, message", [
    ("steps = 'step \\d+'\n", "figure steps: 'step \\\\d+' needs exactly one group"),
    ("val_loss = 'x (1)'\n", "figure 'val_loss' is the metric itself"),
    ("steps = 'step (\\d+'\n", "is not a valid regular expression"),
])
def test_bad_figure_patterns_fail_at_load(figures, message):
    with pytest.raises(ConfigError, match="^labfleet.toml: target") as err:
        parse_config(BASE + "\n[target.figures]\n" + figures)
    assert message in str(err.value)


def test_a_run_that_writes_a_metrics_file(tmp_path):
    train = (
        "import json, os\n"
        "os.makedirs('out', exist_ok=True)\n"
        "json.dump({'val_bpb': 1.75, 'num_steps': 12}, open('out/metrics.json', 'w'))\n"
    )
    folder = make_target(tmp_path / "t", train, signed=False, extra_toml="")
    toml = (folder / "labfleet.toml").read_text().replace('signed = false\n', 'signed = false\nmetrics_file = "out/metrics.json"\n')
    (folder / "labfleet.toml").write_text(toml)
    from tests.conftest import git

    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "metrics file")
    result = run_experiment(RunRequest(folder, tmp_path / "run"))
    assert result.outcome == Outcome.OK and result.metric == 1.75 and result.figures == {"num_steps": 12.0}
    assert json.loads((tmp_path / "run" / "src" / "out" / "metrics.json").read_text())["val_bpb"] == 1.75


def test_a_nanogpt_shaped_run_reads_its_log_line(tmp_path):
    folder = make_nanolike(tmp_path / "nano")
    result = run_experiment(RunRequest(folder, tmp_path / "run"))
    assert result.outcome == Outcome.OK, (result.reason, result.log_tail)
    assert result.metric == pytest.approx(val_loss())
    assert result.figures["steps"] == 20.0 and math.isfinite(float(result.figures["iter_ms"]))
