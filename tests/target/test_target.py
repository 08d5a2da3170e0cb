"""labfleet.toml validation (one clear line per problem) and knob rendering."""

from __future__ import annotations

import pytest

from labfleet import workspace
from labfleet.errors import ConfigError
from labfleet.target import (
    command_placeholders,
    format_value,
    knob_patch,
    load_target,
    parse_config,
    read_constant,
    render_command,
    render_knobs,
    run_command_for,
)
from tests.conftest import make_target
from tests.nanolike import CONFIG, make_nanolike

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
        (("N_LAYER =", "class ="), "knob 'class' must be a Python name (a top-level variable of train.py)"),
        (("N_LAYER =", '"n-layer" ='), "knob 'n-layer' must be a Python name"),
        (('run = "python train.py"', 'run = "python train.py --lr={lr}"'), "target.run: placeholder {lr} is not a knob (known: LEARNING_RATE, N_LAYER"),
        (('run = "python train.py"', "run = \"awk '{print}' x\""), "placeholder {print} is not a knob"),
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


# --------------------------------------------------------------------------- knobs of any name


def test_lower_case_knobs_in_a_config_file(tmp_path):
    folder = make_nanolike(tmp_path / "nano")
    target = load_target(folder)
    assert target.read_knobs() == {"learning_rate": 1e-3, "n_layer": 2}
    patch = knob_patch(target, {"learning_rate": 3e-3, "n_layer": 4})
    assert patch.startswith("diff --git a/config/train_toy.py b/config/train_toy.py\n")
    assert "\n+learning_rate = 3e-3  # with baby networks can afford to go a bit higher\n" in patch
    commit = workspace.commit_patch(folder, "HEAD", patch, "knobs", target.spec.editable)
    text = workspace.show_file(folder, commit, "config/train_toy.py")
    assert text == CONFIG.replace("learning_rate = 1e-3", "learning_rate = 3e-3").replace("n_layer = 2", "n_layer = 4")


FLAGS_TOML = VALID.replace('run = "python train.py"', 'run = "python train.py --lr={LEARNING_RATE} --layers {N_LAYER} --name={NAME} ${HOME} {{x}}"')
FLAGS_TOML += 'NAME = { file = "train.py", choices = ["adamw", "it\'s; rm -rf /"] }\n'


def test_placeholders_render_knob_values_shell_quoted():
    config = parse_config(FLAGS_TOML)
    assert command_placeholders(config.target.run) == ["LEARNING_RATE", "N_LAYER", "NAME"]
    values = {"LEARNING_RATE": 0.003, "N_LAYER": 4, "NAME": "adamw"}
    assert render_command(config.target.run, values) == "python train.py --lr=3e-3 --layers 4 --name=adamw ${HOME} {x}"
    evil = render_command(config.target.run, {**values, "NAME": "it's; rm -rf /"})
    assert "--name='it'\"'\"'s; rm -rf /'" in evil
    import shlex

    assert shlex.split(evil)[5] == "--name=it's; rm -rf /"  # one word, exactly the value
    assert render_command("python t.py --flag={B}", {"B": True}) == "python t.py --flag=True"


def test_the_run_command_of_a_version_takes_its_knob_values():
    config = parse_config(FLAGS_TOML)
    sources = {"train.py": "LEARNING_RATE = 0.02\nN_LAYER = 1\nNAME = 'adamw'\n"}
    assert run_command_for(config, sources).startswith("python train.py --lr=0.02 --layers 1 --name=adamw")
    plain = parse_config(VALID)
    assert run_command_for(plain, {}) == "python train.py"  # no placeholders: no files read


def test_a_flag_configured_script_gets_its_knobs_through_the_command(tmp_path):
    from labfleet.harness import Outcome, RunRequest, run_experiment

    train = (
        "import argparse\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--lr', type=float)\n"
        "p.add_argument('--layers', type=int)\n"
        "a = p.parse_args()\n"
        "print(f'final val {a.lr * 100 + a.layers:.4f}')\n"
    )
    folder = make_target(tmp_path / "t", train, signed=False, extra_toml=(
        '[knobs]\nlr = { file = "knobs.py", low = 1e-4, high = 1e-1, log = true }\n'
        'layers = { file = "knobs.py", choices = [1, 2, 4] }\n'))
    toml = (folder / "labfleet.toml").read_text()
    toml = toml.replace('editable = ["train.py"]', 'editable = ["train.py", "knobs.py"]')
    toml = toml.replace('run = "python train.py"', "run = \"python train.py --lr {lr} --layers={layers}\"\nmetric_pattern = 'final val ([0-9.]+)'")
    (folder / "labfleet.toml").write_text(toml)
    (folder / "knobs.py").write_text("# knob values for the command line\nlr = 0.01\nlayers = 2\n")
    workspace.git(folder, "add", "-A")
    workspace.git(folder, "commit", "-q", "-m", "flags")
    target = load_target(folder)
    base = run_experiment(RunRequest(folder, tmp_path / "base"))
    assert base.outcome == Outcome.OK and base.metric == 3.0, (base.reason, base.log_tail)
    patch = knob_patch(target, {"lr": 0.02, "layers": 4})
    tuned = run_experiment(RunRequest(folder, tmp_path / "tuned", patch=patch))
    assert tuned.outcome == Outcome.OK and tuned.metric == 6.0


# --------------------------------------------------------------------------- dirty or not


def test_untracked_files_beside_the_target_are_not_changes(tmp_path):
    folder = make_nanolike(tmp_path / "nano")
    target = load_target(folder)
    (folder / "run.log").write_text("a log")
    (folder / "notes.md").write_text("notes")
    (folder / "scratch").mkdir()
    (folder / "scratch" / "try.py").write_text("x = 1")
    (folder / "data/toy/train.bin").write_bytes(b"ignored anyway")
    assert target.uncommitted() == []
    (folder / "config/train_toy.py").write_text(CONFIG.replace("1e-3", "2e-3"))  # a tracked editable file
    (folder / "README.md").write_text("x")  # untracked, not a target file: still fine
    assert target.uncommitted() == ["config/train_toy.py"]
    workspace.git(folder, "checkout", "--", "config/train_toy.py")
    (folder / ".gitignore").write_text("*.bin\n")  # a tracked file that is neither editable nor frozen
    assert target.uncommitted() == [".gitignore"]


def test_an_untracked_target_file_is_a_change(tmp_path):
    folder = make_nanolike(tmp_path / "nano")
    workspace.git(folder, "rm", "-q", "--cached", "model.py")
    workspace.git(folder, "commit", "-q", "-m", "untrack model.py")
    assert load_target(folder).uncommitted() == ["model.py"]


def test_a_session_refuses_a_dirty_target_naming_the_file(tmp_path):
    from tests.conftest import run_cli

    folder = make_nanolike(tmp_path / "nano")
    (folder / "model.py").write_text("def bias():\n    return 1.0\n")
    proc = run_cli("run", "-C", str(folder), "--researcher", "random", "--max-experiments", "1")
    assert proc.returncode != 0
    assert "uncommitted changes (model.py)" in proc.stderr + proc.stdout
