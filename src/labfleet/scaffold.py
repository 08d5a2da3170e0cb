"""Creating targets: copy out a bundled one, or describe an existing autoresearch folder."""

from __future__ import annotations

import ast
import shutil
from importlib import resources
from pathlib import Path

from labfleet import workspace
from labfleet.errors import ConfigError
from labfleet.target import CONFIG_FILE, STATE_DIR, format_value, load_target, parse_config

BUNDLED = ("tinygpt",)


def bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise ConfigError(f"unknown bundled target {name!r} (available: {', '.join(BUNDLED)})")
    return Path(str(resources.files("labfleet") / "targets" / name))


def init_bundled(dest: Path, name: str = "tinygpt") -> str:
    """Copy a bundled target to ``dest`` as a git repo with one commit; return the commit."""
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} already exists and is not empty")
    created = not dest.exists()
    try:
        shutil.copytree(bundled_path(name), dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        load_target(dest)  # the bundled target must itself be valid
        commit = workspace.init_repo(dest, f"{name}: initial target (labfleet init)")
    except BaseException:
        if created:  # leave nothing half-made behind
            shutil.rmtree(dest)
        raise
    workspace.exclude_path(dest, f"/{STATE_DIR}/")
    return commit


AUTORESEARCH_TOML = """\
# Runs Karpathy's autoresearch folder unchanged: the agent edits train.py only;
# prepare.py (data, tokenizer, evaluation, TIME_BUDGET) is frozen and hashed.
[target]
name = "{name}"
editable = ["train.py"]
frozen = ["prepare.py"]
setup = "uv run prepare.py"      # downloads data and trains the tokenizer once per host
run = "uv run train.py"
metric = "val_bpb"
direction = "minimize"
budget_seconds = 300             # autoresearch's TIME_BUDGET, fixed in prepare.py
timeout_seconds = 600            # hard limit: start-up, compilation and evaluation included
writable = ["~/.cache/uv"]       # `uv run` needs its package cache writable inside the run box
{knobs}"""


def _numeric_constants(source: str) -> dict[str, int | float]:
    """Top-level ``UPPER_CASE = number`` assignments (knob candidates)."""
    found: dict[str, int | float] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if name.isupper() and isinstance(value, int | float) and not isinstance(value, bool):
                found[name] = value
    return found


def _knob_suggestions(train_py: str) -> str:
    """Commented-out knob lines for train.py's numeric constants: uncomment to search them."""
    lines = ["", "# Knobs for built-in search strategies: uncomment and adjust ranges.", "[knobs]"]
    for name, value in _numeric_constants(train_py).items():
        if isinstance(value, int) and value > 0:
            choices = sorted({max(1, value // 2), value, value * 2})
            lines.append(f'# {name} = {{ file = "train.py", choices = {choices} }}')
        elif isinstance(value, float) and value > 0:
            low, high = format_value(value / 4), format_value(value * 4)
            lines.append(f'# {name} = {{ file = "train.py", low = {low}, high = {high}, log = true }}')
    return "\n".join(lines) + "\n"


def init_from_autoresearch(folder: Path, force: bool = False) -> str:
    """Write the labfleet.toml that runs an autoresearch folder unchanged, and commit it.

    A folder that is not yet a git repo becomes one, with everything in the first commit.
    Returns the commit that holds the new labfleet.toml.
    """
    folder = folder.resolve()
    for required in ("train.py", "prepare.py"):
        if not (folder / required).is_file():
            raise ConfigError(f"{folder} has no {required}: not an autoresearch folder")
    path = folder / CONFIG_FILE
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite)")
    try:
        knobs = _knob_suggestions((folder / "train.py").read_text())
    except SyntaxError:
        knobs = ""
    text = AUTORESEARCH_TOML.format(name=folder.name or "autoresearch", knobs=knobs)
    parse_config(text)  # never write a file we would reject
    path.write_text(text)
    if not workspace.is_repo(folder):
        commit = workspace.init_repo(folder, "autoresearch target (labfleet init --from-autoresearch)")
    else:
        workspace.git(folder, "add", "--", CONFIG_FILE)
        workspace.git(folder, "commit", "--quiet", "--no-verify", "-m", "labfleet: add labfleet.toml",
                      "--", CONFIG_FILE)
        commit = workspace.resolve(folder)
    workspace.exclude_path(folder, f"/{STATE_DIR}/")
    return commit
