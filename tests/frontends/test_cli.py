"""The console entry point as a user meets it: real subprocesses, real git."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labfleet import workspace
from labfleet.target import load_target
from tests.conftest import git, make_target, run_cli


def test_help_is_light():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, labfleet.cli; print(sorted({'torch', 'numpy', 'ray', 'sky'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True,
    )
    assert proc.stdout.strip() == "[]"
    help_text = run_cli("--help").stdout
    for command in ("init", "prepare", "baseline"):
        assert command in help_text


def test_each_command_is_dispatched_by_an_app_of_that_command_alone():
    """``main`` builds only the command it runs; its help and its errors are the whole app's."""
    from typer.testing import CliRunner

    from labfleet.cli.app import _name, _narrowed, app

    names = [_name(c) for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert len(names) > 20 and "status" in names and "target" in names
    runner = CliRunner()
    for name in names:
        narrow = _narrowed([name, "--help"])
        assert narrow is not app
        assert [_name(c) for c in narrow.registered_commands] + [g.name for g in narrow.registered_groups] == [name]
        whole, alone = runner.invoke(app, [name, "--help"]), runner.invoke(narrow, [name, "--help"])
        assert (alone.exit_code, alone.output) == (whole.exit_code, whole.output), name
    bad = runner.invoke(_narrowed(["status", "--bogus"]), ["status", "--bogus"])
    assert bad.exit_code == 2 and "No such option" in bad.output
    for argv in ([], ["--help"], ["statuz"]):
        assert _narrowed(argv) is app  # the whole app: every command listed, "did you mean" for a typo


def test_status_json_start_up_imports_no_pydantic_or_target(tmp_path):
    """The read commands stay fast on big ledgers: no config model (pydantic) on the way."""
    state = tmp_path / ".labfleet"
    from labfleet.ledger import Ledger

    with Ledger.for_target(state) as ledger:
        ledger.create_session("t", "random", {"workers": 1}, "labfleet/1", "0" * 40, {})
    code = ("import sys, io, contextlib; sys.argv = ['labfleet', 'status', '--json', '-C', sys.argv[1]]\n"
            "from labfleet.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main()\n"
            "    except SystemExit: pass\n"
            "print(sorted({'pydantic', 'labfleet.target', 'labfleet.session', 'rich.console'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_wrong_flag_exits_non_zero():
    proc = run_cli("baseline", "--sead", "1")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


def test_init_creates_a_clean_repo_with_one_commit(tmp_path):
    proc = run_cli("init", "mylab", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lab = tmp_path / "mylab"
    assert git(lab, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(lab, "status", "--porcelain") == ""
    target = load_target(lab)
    assert target.spec.name == "tinygpt" and target.config.evaluate is not None  # measured by a frozen evaluator
    assert set(target.read_knobs()) == set(target.knobs) and target.knobs
    again = run_cli("init", "mylab", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {lab} already exists and is not empty".replace(str(lab), "mylab")


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[target\n", "error: labfleet.toml: invalid TOML"),
        ("[target]\nname = 'x'\n", "error: labfleet.toml: target.editable: Field required (and 4 more problems)"),
    ],
)
def test_malformed_toml_is_one_line_and_exit_1(tmp_path, toml, message):
    (tmp_path / "labfleet.toml").write_text(toml)
    for command in ("baseline", "prepare"):
        proc = run_cli(command, "-C", str(tmp_path))
        assert proc.returncode == 1
        assert proc.stderr.startswith(message), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_target(tmp_path):
    proc = run_cli("baseline", "-C", str(tmp_path))
    assert proc.returncode == 1
    assert "no labfleet.toml in" in proc.stderr and "labfleet init" in proc.stderr


def test_baseline_json_and_table(tmp_path):
    target = make_target(tmp_path / "t")
    proc = run_cli("prepare", "-C", str(target))
    assert proc.returncode == 0, proc.stderr
    assert "setup done" in proc.stdout
    assert "setup already done" in run_cli("prepare", "-C", str(target)).stdout
    proc = run_cli("baseline", "-C", str(target), "--seed", "4", "--budget", "2", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["outcome"] == "ok" and result["seed"] == 4 and result["budget_seconds"] == 2
    assert result["setup_cached"] is True
    assert Path(result["log_path"]).is_relative_to(target / ".labfleet" / "runs")
    assert git(target, "status", "--porcelain") == ""  # .labfleet/ is excluded, never dirty
    table = run_cli("baseline", "-C", str(target), "--device", "cpu")
    assert table.returncode == 0
    assert "val_bpb" in table.stdout and "1.503000" in table.stdout


def test_baseline_that_fails_exits_1_and_shows_why(tmp_path):
    target = make_target(tmp_path / "t", 'raise SystemExit("diverged badly")\n')
    proc = run_cli("baseline", "-C", str(target), "--device", "cpu")
    assert proc.returncode == 1
    assert "crashed" in proc.stdout and "diverged badly" in proc.stdout


def test_bad_device(tmp_path):
    proc = run_cli("baseline", "-C", str(make_target(tmp_path / "t")), "--device", "tpu")
    assert proc.returncode == 1
    assert "use cpu, cuda, cuda:N, mps or auto" in proc.stderr


# ---------------------------------------------------------------- autoresearch

STAND_IN_TRAIN = '''\
"""A stand-in for autoresearch's train.py: same shape, prints the same block."""
import os
DEPTH = 8
MATRIX_LR = 0.04
TOTAL_BATCH_SIZE = 2**19
assert os.path.exists(os.path.expanduser(os.environ["STAND_IN_DATA"]))
print("step 00001 | loss 3.2")
print("---")
print(f"val_bpb:          {0.9979 + DEPTH / 1e4:.6f}")
print("training_seconds: 300.1")
print("peak_vram_mb:     45060.2")
print("num_steps:        953")
'''


@pytest.mark.skipif(shutil.which("uv") is None and not (Path(sys.executable).parent / "uv").exists(), reason="uv is not installed")
def test_init_from_autoresearch_runs_the_folder_unchanged(tmp_path):
    folder = tmp_path / "autoresearch"
    folder.mkdir()
    data = tmp_path / "data"
    (folder / "pyproject.toml").write_text('[project]\nname = "autoresearch"\nversion = "0.1.0"\nrequires-python = ">=3.10"\ndependencies = []\n')
    (folder / "prepare.py").write_text(f'import pathlib\npathlib.Path("{data}").write_text("shards")\nTIME_BUDGET = 300\n')
    (folder / "train.py").write_text(STAND_IN_TRAIN)
    (folder / "program.md").write_text("# autoresearch\n")
    git(folder, "init", "-q", "-b", "master")
    git(folder, "add", "-A")
    git(folder, "-c", "user.name=k", "-c", "user.email=k@k", "commit", "-qm", "initial")

    proc = run_cli("init", "--from-autoresearch", str(folder))
    assert proc.returncode == 0, proc.stderr
    spec = load_target(folder).spec
    assert (spec.editable, spec.frozen) == (["train.py"], ["prepare.py"])
    assert (spec.setup, spec.run, spec.metric, spec.budget_seconds) == ("uv run prepare.py", "uv run train.py", "val_bpb", 300)
    assert git(folder, "status", "--porcelain") == ""
    assert git(folder, "log", "-1", "--format=%s").strip() == "labfleet: add labfleet.toml"
    text = (folder / "labfleet.toml").read_text()
    assert '# DEPTH = { file = "train.py", choices = [4, 8, 16] }' in text
    assert "# MATRIX_LR" in text

    proc = run_cli("baseline", "-C", str(folder), "--json", "--device", "cpu", env={"STAND_IN_DATA": str(data)})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert result["outcome"] == "ok"
    assert result["metric"] == pytest.approx(0.9987)
    assert result["figures"]["num_steps"] == 953
    assert data.read_text() == "shards"  # setup ran

    again = run_cli("init", "--from-autoresearch", str(folder))
    assert again.returncode == 1 and "already exists (use --force" in again.stderr


def test_init_from_autoresearch_needs_the_right_shape(tmp_path):
    proc = run_cli("init", "--from-autoresearch", str(tmp_path))
    assert proc.returncode == 1
    assert "has no train.py: not an autoresearch folder" in proc.stderr


def test_exclude_is_idempotent(tmp_path):
    target = make_target(tmp_path / "t")
    workspace.exclude_path(target, "/.labfleet/")
    workspace.exclude_path(target, "/.labfleet/")
    exclude = (target / ".git" / "info" / "exclude").read_text()
    assert exclude.count("/.labfleet/") == 1
