"""Attacks on the metric from editable code and from patches: each is refused or caught.

Every test here makes the attack with real processes and real git and asserts the
defence: the forged metric is never ``ok``, a bad patch is ``rejected`` with a one-line
reason before anything runs, and nothing crashes the harness.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from labfleet import integrity, workspace
from labfleet.errors import PatchError
from labfleet.harness import Outcome, RunRequest, run_experiment
from tests.conftest import git


def run(target: Path, tmp_path: Path, name: str = "run", **kwargs):
    return run_experiment(RunRequest(target_dir=target, run_dir=tmp_path / "runs" / name, **kwargs))


# --------------------------------------------------------------------------- the signing key

# Editable code that looks for the key everywhere a process can look without ptrace, keeps
# what it read in loot.txt, and signs a forged metric with every 64-hex string it found.
KEY_HUNT = r'''
import glob, os, re, evalkit

loot = []
def grab(path):
    try:
        with open(path, "rb") as f:
            os.set_blocking(f.fileno(), False)
            loot.append(f.read(1 << 20).decode(errors="replace"))
    except Exception:
        pass

loot += [f"{k}={v}" for k, v in os.environ.items()]
grab("/proc/self/environ")
grab("/proc/self/cmdline")
for fd in glob.glob("/proc/self/fd/*"):
    grab(fd)
for fd in range(3, 256):  # inherited descriptors, read directly
    try:
        os.set_blocking(fd, False)
        loot.append(os.read(fd, 4096).decode(errors="replace"))
    except Exception:
        pass
pid = os.getpid()
while pid > 1:  # every ancestor: its initial environment, its command line, its descriptors
    stat = open(f"/proc/{pid}/stat").read()
    pid = int(stat.rsplit(")", 1)[1].split()[1])
    grab(f"/proc/{pid}/environ")
    grab(f"/proc/{pid}/cmdline")
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        if not os.path.isdir(fd):
            grab(fd)
for root in ("..", os.environ["LABFLEET_CACHE_DIR"]):  # the harness's files: run dir, cache
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith("loot.txt"):
            grab(path)
open("loot.txt", "w").write("\n".join(loot))
candidates = [c for c in re.findall(r"\b[0-9a-f]{64}\b", "\n".join(loot))]
evalkit._set_signing_key(candidates[0] if candidates else "00" * 32)
evalkit.report(0.0001)
'''


def test_key_is_readable_by_no_route_and_the_forged_metric_is_not_ok(target_factory, tmp_path, monkeypatch):
    keys: list[str] = []
    real = integrity.signing_channel

    def recording() -> tuple[str, int]:
        key, fd = real()
        keys.append(key)
        return key, fd

    monkeypatch.setattr(integrity, "signing_channel", recording)
    result = run(target_factory(KEY_HUNT), tmp_path)
    loot = (tmp_path / "runs" / "run" / "src" / "loot.txt").read_text()
    assert len(keys) == 1
    assert keys[0] not in loot
    # the routes work: they read the run's real environment blocks
    assert f"LABFLEET_CACHE_DIR={os.environ['LABFLEET_CACHE']}" in loot
    assert "LABFLEET_SIGNING_FD=" in loot  # the number is there; the key is not
    assert result.outcome == Outcome.SUSPECT
    assert "invalid signature" in result.reason


def test_the_launcher_reads_the_key_once_from_a_pipe():
    key, fd = integrity.signing_channel()
    env = {integrity.SIGNING_FD_ENV: str(fd)}
    assert integrity.read_signing_key(env) == key
    assert env == {}
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


# --------------------------------------------------------------------------- patch holes


def patch_from(target: Path, tmp_path: Path, change: Callable[[Path], object]) -> str:
    """The patch git itself writes for ``change`` made in a clone (one that returns True stages itself)."""
    clone = tmp_path / f"clone{len(list(tmp_path.glob('clone*')))}"
    subprocess.run(["git", "clone", "-q", str(target), str(clone)], check=True)
    if not change(clone):
        git(clone, "add", "-A")
    return git(clone, "diff", "--cached", "--binary", "-M")


def _symlink(to: str) -> Callable[[Path], None]:
    def change(clone: Path) -> None:
        (clone / "train.py").unlink()
        (clone / "train.py").symlink_to(to)
    return change


def _gitlink(clone: Path) -> bool:
    git(clone, "rm", "-q", "--cached", "train.py")
    sha = git(clone, "rev-parse", "HEAD").strip()
    git(clone, "update-index", "--add", "--cacheinfo", f"160000,{sha},train.py")
    return True


def _delete(clone: Path) -> None:
    (clone / "train.py").unlink()


def _binary(clone: Path) -> None:
    (clone / "train.py").write_bytes(b"\x00\x01\x02 binary\x00")


def _toml(clone: Path) -> None:
    path = clone / "labfleet.toml"
    path.write_text(path.read_text().replace("budget_seconds = 1", "budget_seconds = 100"))


def _rename(clone: Path) -> None:
    (clone / "train.py").rename(clone / "train2.py")


@pytest.mark.parametrize(
    "change, why",
    [
        (_symlink("evalkit.py"), "a symlink (mode 120000)"),
        (_symlink("/etc/passwd"), "a symlink (mode 120000)"),
        (_gitlink, "a gitlink (submodule)"),
        (_binary, "the patch is binary"),
        (_toml, "labfleet.toml, which an experiment may never change"),
        (_rename, "the patch renames or copies a file"),
        (_delete, "the patch deletes train.py"),
    ],
    ids=["symlink-to-frozen", "absolute-symlink", "gitlink", "binary", "labfleet-toml", "rename", "delete"],
)
def test_patch_holes_are_rejected_before_anything_runs(target_factory, tmp_path, change, why):
    target = target_factory()
    patch = patch_from(target, tmp_path, change)
    result = run(target, tmp_path, patch=patch)
    assert result.outcome == Outcome.REJECTED
    assert why in result.reason
    assert "\n" not in result.reason
    assert result.exit_code is None  # nothing ran
    with pytest.raises(PatchError, match=why.split(" (")[0]):  # the same checker, called directly
        workspace.check_patch(target, patch, ["train.py"])


def test_a_rename_between_editable_files_is_rejected(target_factory, tmp_path):
    target = target_factory()
    patch = patch_from(target, tmp_path, _rename)
    with pytest.raises(PatchError, match="renames or copies"):
        workspace.check_patch(target, patch, ["train.py", "train2.py"])


@pytest.mark.parametrize("path", ["../outside.py", "/tmp/outside.py", ".git/config"])
def test_paths_outside_the_tree_are_rejected(target_factory, tmp_path, path):
    target = target_factory()
    patch = f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+x = 1\n"
    result = run(target, tmp_path, patch=patch)
    assert result.outcome == Outcome.REJECTED
    assert result.exit_code is None
    assert "\n" not in result.reason and result.reason


def test_a_committed_absolute_symlink_is_rejected_not_a_crash(target_factory, tmp_path):
    target = target_factory()
    (target / "link").symlink_to("/etc/passwd")
    git(target, "add", "link")
    git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a link")
    result = run(target, tmp_path)
    assert result.outcome == Outcome.REJECTED
    assert "cannot be materialized" in result.reason
    assert "\n" not in result.reason


def test_patch_naming_evaluation_data_is_flagged(target_factory, tmp_path):
    target = target_factory()
    patch = (
        "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,3 @@\n"
        " LEARNING_RATE = 3e-3  # step size\n+# os.environ.get('LABFLEET_EVAL_DIR')\n N_LAYER = 2\n"
    )
    result = run(target, tmp_path, patch=patch)
    assert result.outcome == Outcome.OK
    assert result.flags == ["the patch names evaluation-only data: LABFLEET_EVAL_DIR"]


def test_the_llm_pre_check_uses_the_same_rules(target_factory, tmp_path):
    from labfleet.researchers.llm import check_proposal

    target = target_factory()
    files = {"train.py": (target / "train.py").read_text()}
    for change, why in ((_symlink("/etc/passwd"), "a symlink"), (_binary, "binary"), (_rename, "renames")):
        raw = {"description": "x", "patch": patch_from(target, tmp_path, change)}
        with pytest.raises(ValueError, match=why):
            check_proposal(raw, files, ["train.py"], "val_bpb")


def test_holdout_and_evaluate_tables_are_validated():
    from labfleet.errors import ConfigError
    from labfleet.target import parse_config

    base = '[target]\nname="t"\neditable=["train.py"]\nrun="x"\nmetric="val_bpb"\nbudget_seconds=1\ntimeout_seconds=2\n'
    with pytest.raises(ConfigError, match="holdout: needs a command, or an \\[evaluate\\] evaluator"):
        parse_config(base + '[holdout]\nmetric="h"\n')
    with pytest.raises(ConfigError, match="must differ from target.metric"):
        parse_config(base + '[holdout]\nmetric="val_bpb"\ncommand="python h.py"\n')
    config = parse_config(base + '[evaluate]\ncommand="python e.py"\n[holdout]\nmetric="h"\ndirection="maximize"\n')
    assert config.evaluate.command == "python e.py" and config.holdout.direction == "maximize"
