"""labfleet.toml validation (one clear line per problem) and knob rendering."""

from __future__ import annotations

import pytest

from labfleet import workspace
from labfleet.errors import ConfigError
from labfleet.target import format_value, knob_patch, load_target, parse_config, read_constant, render_knobs
from tests.conftest import make_target

VALID = """\
[target]
name = "tinygpt"
editable = ["train.py"]
frozen = ["prepare.py"]
setup = "python prepare.py"
run = "python train.py"
metric = "val_bpb"
direction = "minimize"
budget_seconds = 30
timeout_seconds = 90

[knobs]
LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }
N_LAYER = { file = "train.py", choices = [1, 2, 3, 4] }
"""


def test_valid_config():
    config = parse_config(VALID)
    assert config.target.name == "tinygpt"
    assert config.target.budget_seconds == 30
    assert config.knobs["N_LAYER"].choices == [1, 2, 3, 4]
    assert config.knobs["LEARNING_RATE"].log


@pytest.mark.parametrize(
    "edit, message",
    [
        (("budget_seconds = 30", "budget_seconds = -5"), "labfleet.toml: target.budget_seconds: Input should be greater than 0"),
        (("budget_seconds = 30", "budget_seconds = \"soon\""), "target.budget_seconds: Input should be a valid number"),
        (('direction = "minimize"', 'direction = "lower"'), "target.direction: Input should be 'minimize' or 'maximize'"),
        (('metric = "val_bpb"\n', ""), "target.metric: Field required"),
        (('editable = ["train.py"]', "editable = []"), "target.editable: List should have at least 1 item"),
        (('editable = ["train.py"]', 'editable = ["../train.py"]'), "must be a path relative to the target folder"),
        (('frozen = ["prepare.py"]', 'frozen = ["prepare.py", "train.py"]'), "'train.py' is listed as both editable and frozen"),
        (("timeout_seconds = 90", "timeout_seconds = 20"), "timeout_seconds (20) must exceed budget_seconds (30)"),
        (("timeout_seconds = 90", "timeout_seconds = 90\ncolour = 1"), "target.colour: unknown key"),
        (("low = 1e-4, high = 1e-1", "low = 1e-1, high = 1e-4"), "knobs.LEARNING_RATE: low (0.1) must be below high (0.0001)"),
        (("low = 1e-4, high = 1e-1, log = true", "low = 0, high = 1e-1, log = true"), "log = true needs low > 0"),
        (("choices = [1, 2, 3, 4]", "choices = []"), "choices must not be empty"),
        (("choices = [1, 2, 3, 4]", "low = 1"), "needs choices = [...] or both low and high"),
        (('N_LAYER = { file = "train.py"', 'N_LAYER = { file = "model.py"'), "knob N_LAYER: file 'model.py' is not listed in target.editable"),
        (("N_LAYER =", "n_layer ="), "knob 'n_layer' must be an UPPER_CASE constant name"),
        (("[knobs]", "[knobs"), "labfleet.toml: invalid TOML"),
        (("[target]\n", ""), "Field required"),
    ],
)
def test_malformed_config_gives_one_line(edit, message):
    old, new = edit
    assert old in VALID
    with pytest.raises(ConfigError) as info:
        parse_config(VALID.replace(old, new, 1))
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith("labfleet.toml: ")


def test_load_target_checks_files_and_knobs(tmp_path):
    with pytest.raises(ConfigError, match="no labfleet.toml in"):
        load_target(tmp_path)
    folder = make_target(tmp_path / "t", extra_toml='[knobs]\nMISSING = { file = "train.py", low = 1, high = 2 }\n')
    with pytest.raises(ConfigError, match=r"knob MISSING: no top-level assignment `MISSING = \.\.\.` in train.py"):
        load_target(folder)
    (folder / "labfleet.toml").write_text((folder / "labfleet.toml").read_text().replace("MISSING", "N_LAYER"))
    assert load_target(folder).read_knobs() == {"N_LAYER": 2}
    (folder / "evalkit.py").unlink()
    with pytest.raises(ConfigError, match="target.frozen: 'evalkit.py' does not exist"):
        load_target(folder)


SOURCE = '''\
"""doc"""
import math

# ---- optimizer
LEARNING_RATE = 3e-3  # peak learning rate
WEIGHT_DECAY: float = 0.1
N_LAYER = 2
NAME = "adamw"


def f():
    LEARNING_RATE = 5  # not top-level: untouched
'''


def test_render_knobs_rewrites_only_top_level_values():
    out = render_knobs(SOURCE, {"LEARNING_RATE": 0.01, "WEIGHT_DECAY": 0.0, "N_LAYER": 4, "NAME": "sgd"})
    assert "LEARNING_RATE = 0.01  # peak learning rate\n" in out
    assert "WEIGHT_DECAY: float = 0.0\n" in out
    assert "N_LAYER = 4\n" in out
    assert "NAME = 'sgd'\n" in out
    assert "    LEARNING_RATE = 5  # not top-level" in out
    assert read_constant(out, "LEARNING_RATE", "train.py") == 0.01
    assert render_knobs(out, {"LEARNING_RATE": 3e-3, "WEIGHT_DECAY": 0.1, "N_LAYER": 2, "NAME": "adamw"}) == SOURCE.replace('"adamw"', "'adamw'")


@pytest.mark.parametrize(
    "value, text",
    [(0.003, "3e-3"), (1e-2, "0.01"), (0.0875, "0.0875"), (0.25, "0.25"), (3.0, "3.0"), (128, "128"), (1.5e-05, "1.5e-5"), (True, "True")],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_knob_patch_is_an_ordinary_diff_that_git_applies(tmp_path):
    folder = make_target(
        tmp_path / "t",
        extra_toml='[knobs]\nLEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }\n'
        'N_LAYER = { file = "train.py", choices = [1, 2, 3] }\n',
    )
    target = load_target(folder)
    patch = knob_patch(target, {"LEARNING_RATE": 0.02, "N_LAYER": 3})
    assert "\n-LEARNING_RATE = 3e-3  # step size\n" in patch
    assert "\n+LEARNING_RATE = 0.02  # step size\n" in patch
    assert "\n-N_LAYER = 2\n" in patch and "\n+N_LAYER = 3\n" in patch
    commit = workspace.commit_patch(folder, "HEAD", patch, "knobs", target.spec.editable)
    assert target.read_knobs({"train.py": workspace.show_file(folder, commit, "train.py")}) == {
        "LEARNING_RATE": 0.02,
        "N_LAYER": 3,
    }
    with pytest.raises(ConfigError, match="knob N_LAYER: 7 is outside its range"):
        knob_patch(target, {"N_LAYER": 7})
    with pytest.raises(ConfigError, match="unknown knob 'DEPTH'"):
        knob_patch(target, {"DEPTH": 7})
    assert knob_patch(target, {"N_LAYER": 2}) == ""  # unchanged value: no diff
