"""The research target: a folder (a git repo) with a ``labfleet.toml``.

``load_target(folder)`` reads and validates the file and returns a ``Target``.
Every problem becomes a one-line ``ConfigError`` naming the key, e.g.
``labfleet.toml: target.budget_seconds: must be greater than 0``.

Knobs are top-level names assigned a literal in editable Python files (``LEARNING_RATE``
in a train.py, ``learning_rate`` in a nanoGPT config file). ``render_knobs`` rewrites
their assignments in place and ``knob_patch`` turns knob values into an ordinary
unified diff, so a knob experiment is just another patch. A ``{name}`` placeholder in
``run`` passes a knob to a script configured by flags: ``render_command`` fills it with
the knob's value in the version being run, shell-quoted.
"""

from __future__ import annotations

import ast
import difflib
import functools
import keyword
import math
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labfleet.errors import ConfigError
from labfleet.ledger.store import STATE_DIR  # noqa: F401  (re-exported: labfleet.target.STATE_DIR)

CONFIG_FILE = "labfleet.toml"
KnobValue = int | float | str | bool

_KNOB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# `{name}` in the run command; `{{`/`}}` are literal braces and `${VAR}` is left to the shell
_PLACEHOLDER = re.compile(r"\{\{|\}\}|(?<!\$)\{([^{}]*)\}")


def _one_group_pattern(value: str, what: str) -> str:
    try:
        compiled = re.compile(value, re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"{what} {value!r} is not a valid regular expression: {exc}") from None
    if compiled.groups != 1:
        raise ValueError(f"{what} {value!r} needs exactly one group (...) around the number, has {compiled.groups}")
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be a path relative to the target folder")
    return str(path)


class Knob(BaseModel):
    """A searchable constant: either a numeric range (low/high, optionally log) or choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[KnobValue] | None = None
    # what kind of change it is ("optimizer", "architecture", "width", ...): names the
    # session's phases and lets a researcher move on to another group
    group: str = ""

    @model_validator(mode="after")
    def _range_or_choices(self) -> Knob:
        has_range = self.low is not None or self.high is not None
        if self.choices is not None:
            if has_range:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices = [...] or both low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("log = true needs low > 0")
        return self

    def contains(self, value: KnobValue) -> bool:
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        return isinstance(value, int | float) and self.low <= float(value) <= self.high


class TargetSpec(BaseModel):
    """The ``[target]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    editable: list[str] = Field(min_length=1)
    frozen: list[str] = []
    setup: str = ""
    run: str = Field(min_length=1)
    metric: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    direction: Literal["minimize", "maximize"] = "minimize"
    budget_seconds: float = Field(gt=0)
    timeout_seconds: float = Field(gt=0)
    # The run is started through a frozen launcher and the frozen evaluation signs
    # the metric line with a one-time key (see harness).
    signed: bool = False
    # Seconds a run may use beyond its budget (start-up, evaluation) before the harness stops
    # it as over_budget (CPU seconds per thread on CPU slots, wall seconds on GPUs); None:
    # max(15 s, half the budget). The wall clock still stops at timeout_seconds.
    eval_allowance_seconds: float | None = Field(default=None, ge=0)
    network: bool = False  # runs reach the network (off: the box has no network namespace)
    # Host folders (``~`` expanded) a run may write besides its run directory: tool caches
    # such as uv's. They are shared by every run; nothing of labfleet's may be among them.
    writable: list[str] = []
    # Where the metric comes from; default: the `key: value` block after a `---` line.
    # A regular expression with one group: its last match in the run's output.
    metric_pattern: str = ""
    # Or a JSON object the run writes (path relative to the target folder), key = metric.
    metrics_file: str = ""
    # Extra figures (steps, tokens/s, memory): name -> regular expression with one group.
    figures: dict[str, str] = {}

    @field_validator("editable", "frozen")
    @classmethod
    def _paths(cls, values: list[str]) -> list[str]:
        return [_relative_path(v) for v in values]

    @field_validator("metric_pattern")
    @classmethod
    def _metric_pattern(cls, value: str) -> str:
        return _one_group_pattern(value, "metric_pattern") if value else value

    @field_validator("metrics_file")
    @classmethod
    def _metrics_file(cls, value: str) -> str:
        return _relative_path(value) if value else value

    @field_validator("figures")
    @classmethod
    def _figures(cls, values: dict[str, str]) -> dict[str, str]:
        for name, pattern in values.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"figure name {name!r} must be a plain identifier")
            _one_group_pattern(pattern, f"figure {name}:")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        both = sorted(set(self.editable) & set(self.frozen))
        if both:
            raise ValueError(f"{both[0]!r} is listed as both editable and frozen")
        if self.metric_pattern and self.metrics_file:
            raise ValueError("give metric_pattern or metrics_file, not both")
        if self.signed and (self.metric_pattern or self.metrics_file):
            raise ValueError("signed = true needs the metric in the `---` block (no metric_pattern or metrics_file)")
        if self.metric in self.figures:
            raise ValueError(f"figure {self.metric!r} is the metric itself")
        if self.metrics_file in {*self.editable, *self.frozen}:
            raise ValueError(f"metrics_file {self.metrics_file!r} is a target file: the run must write it")
        if self.timeout_seconds <= self.budget_seconds:
            raise ValueError(
                f"timeout_seconds ({self.timeout_seconds:g}) must exceed "
                f"budget_seconds ({self.budget_seconds:g})"
            )
        return self


class ScreenTier(BaseModel):
    """Cheap first look at every proposal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[str] = []  # hardware classes that screen; empty: every class
    budget_seconds: float | None = Field(default=None, gt=0)  # None: the target's budget
    seeds: int = Field(default=1, ge=1)  # runs (seeds) per screened experiment


class ValidateTier(BaseModel):
    """Where screened winners are confirmed before they are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[str] = []  # hardware classes that validate; empty: every class
    budget_seconds: float | None = Field(default=None, gt=0)
    repeats: int = Field(default=2, ge=1)  # validation runs (seeds) per promoted experiment
    promote: int = Field(default=2, ge=1)  # screened winners under validation at once


class Tiers(BaseModel):
    """``[tiers]``: screen every proposal on cheap workers, validate winners on fast ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    screen: ScreenTier = ScreenTier()
    validate_: ValidateTier = Field(default=ValidateTier(), alias="validate")


DEFAULT_TIERS = Tiers()  # the defaults, built once (frozen): no model built per decision


class EvaluateSpec(BaseModel):
    """``[evaluate]``: a frozen evaluator the harness runs beside the run, in its own process.

    It owns the evaluation data and writes the metric (see ``labfleet.integrity``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(min_length=1)


class HoldoutSpec(BaseModel):
    """``[holdout]``: a second frozen metric, measured on kept and validated versions, never shown
    to researchers. Reported by the ``[evaluate]`` evaluator, or by its own ``command``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    direction: Literal["minimize", "maximize"] | None = None  # None: the target's direction
    command: str = ""  # run after the run in the version's folder; "" : the evaluator reports it


class TargetConfig(BaseModel):
    """The whole ``labfleet.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetSpec
    knobs: dict[str, Knob] = {}
    tiers: Tiers | None = None  # None: one tier, every result decided where it ran
    evaluate: EvaluateSpec | None = None  # None: the run's own output carries the metric
    holdout: HoldoutSpec | None = None

    @model_validator(mode="after")
    def _holdout_has_a_source(self) -> TargetConfig:
        if self.holdout is not None:
            if not self.holdout.command and self.evaluate is None:
                raise ValueError("holdout: needs a command, or an [evaluate] evaluator that reports it")
            if self.holdout.metric == self.target.metric:
                raise ValueError("holdout.metric must differ from target.metric")
        return self

    @model_validator(mode="after")
    def _knobs_in_editable_files(self) -> TargetConfig:
        for name, knob in self.knobs.items():
            if not _KNOB_NAME.match(name) or keyword.iskeyword(name):
                raise ValueError(f"knob {name!r} must be a Python name (a top-level variable of {knob.file})")
            if knob.file not in self.target.editable:
                raise ValueError(f"knob {name}: file {knob.file!r} is not listed in target.editable")
        for name in command_placeholders(self.target.run):
            if name not in self.knobs:
                known = ", ".join(self.knobs) or "none"
                raise ValueError(f"target.run: placeholder {{{name}}} is not a knob (known: {known}; "
                                 "write {{ and }} for literal braces)")
        return self


def _first_error(err: ValidationError) -> str:
    """One line for a pydantic error: ``target.budget_seconds: must be ...``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(err.errors()) - 1
    text = f"{loc}: {msg}" if loc else msg
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_toml(model: type[ModelT], text: str, source: str) -> ModelT:
    """A TOML file validated into ``model``; every mistake is one ConfigError line naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


def parse_config(text: str, source: str = CONFIG_FILE) -> TargetConfig:
    return parse_toml(TargetConfig, text, source)


@dataclass(frozen=True)
class Target:
    """A loaded target: its folder and validated configuration."""

    root: Path
    config: TargetConfig

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def spec(self) -> TargetSpec:
        return self.config.target

    @property
    def knobs(self) -> dict[str, Knob]:
        return self.config.knobs

    def uncommitted(self) -> list[str]:
        """Files that differ from HEAD (labfleet's own state folder is git-excluded first).

        Untracked files count only when they are editable, frozen or labfleet.toml.
        Raises ``ConfigError`` when the folder is not a git repo: labfleet runs commits.
        """
        from labfleet import workspace  # git only where it is needed

        if not workspace.is_repo(self.root):
            raise ConfigError(f"{self.root} is not a git repo (labfleet records versions as commits)")
        workspace.exclude_path(self.root, f"/{STATE_DIR}/")
        return workspace.dirty_files(self.root, {*self.spec.editable, *self.spec.frozen, CONFIG_FILE})

    def read_knobs(self, sources: Mapping[str, str] | None = None) -> dict[str, KnobValue]:
        """Current values of all knobs, read from ``sources`` (path -> text) or the folder."""
        values: dict[str, KnobValue] = {}
        for name, knob in self.knobs.items():
            text = sources[knob.file] if sources is not None else (self.root / knob.file).read_text()
            values[name] = read_constant(text, name, knob.file)
        return values


def load_target(folder: Path | str, *, check_files: bool = True) -> Target:
    """Load ``folder/labfleet.toml``; with ``check_files``, also check files and knobs exist."""
    root = Path(folder).resolve()
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {root} (run `labfleet init` to create a target)")
    config = parse_config(path.read_text(), CONFIG_FILE)
    target = Target(root, config)
    if check_files:
        for kind, files in (("editable", config.target.editable), ("frozen", config.target.frozen)):
            for rel in files:
                if not (root / rel).is_file():
                    raise ConfigError(f"{CONFIG_FILE}: target.{kind}: {rel!r} does not exist in {root}")
        target.read_knobs()  # raises if a knob is missing from its file
    return target


# --------------------------------------------------------------------------- knobs


def _find_assignment(tree: ast.Module, name: str) -> ast.Assign | ast.AnnAssign | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name:
            return node
    return None


@functools.lru_cache(maxsize=32)  # the same source is read for every knob of every experiment
def _parse(text: str, file: str) -> ast.Module:
    try:
        return ast.parse(text)
    except SyntaxError as exc:
        raise ConfigError(f"{file}: cannot parse to find knobs: {exc.msg} (line {exc.lineno})") from None


def read_constant(text: str, name: str, file: str) -> KnobValue:
    """The literal value of the top-level constant ``name`` in a Python source."""
    node = _find_assignment(_parse(text, file), name)
    if node is None or node.value is None:
        raise ConfigError(f"knob {name}: no top-level assignment `{name} = ...` in {file}")
    try:
        value = ast.literal_eval(node.value)
    except ValueError:
        raise ConfigError(f"knob {name}: `{name}` in {file} is not a literal value") from None
    if not isinstance(value, int | float | str | bool):
        raise ConfigError(f"knob {name}: `{name}` in {file} is not a number, string or bool")
    return value


def format_value(value: KnobValue) -> str:
    """Python source for a knob value; floats stay floats and read naturally (3e-3, 0.1)."""
    if isinstance(value, bool | str):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ConfigError(f"knob value {value!r} is not finite")
    if value != 0 and abs(value) < 0.01:  # learning rates and friends: 3e-3, 1.5e-5
        mantissa, exp = f"{value:.5e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    text = f"{value:.6g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def render_knobs(text: str, values: Mapping[str, KnobValue], file: str = "<source>") -> str:
    """Rewrite the right-hand side of each ``NAME = literal`` line; comments stay put."""
    lines = _render_lines(text, values, file)
    return "".join(lines) if lines is not None else _render_ast(text, values, file)


def _render_ast(text: str, values: Mapping[str, KnobValue], file: str) -> str:
    """``render_knobs`` for any layout (values over several lines, several on one line)."""
    tree = _parse(text, file)
    lines = text.splitlines(keepends=True)
    # Replace from the bottom up so earlier offsets stay valid.
    edits = []
    for name, value in values.items():
        node = _find_assignment(tree, name)
        if node is None or node.value is None:
            raise ConfigError(f"knob {name}: no top-level assignment `{name} = ...` in {file}")
        v = node.value
        if v.end_lineno is None or v.end_col_offset is None:
            raise ConfigError(f"knob {name}: cannot locate its value in {file}")
        edits.append((v.lineno, v.col_offset, v.end_lineno, v.end_col_offset, format_value(value)))
    for lineno, col, end_lineno, end_col, new in sorted(edits, reverse=True):
        first, last = lines[lineno - 1], lines[end_lineno - 1]
        lines[lineno - 1 : end_lineno] = [_bytes_cut(first, 0, col) + new + _bytes_cut(last, end_col, None)]
    return "".join(lines)


@functools.lru_cache(maxsize=32)  # one source is rendered for many experiments (the champion's)
def _layout(text: str, file: str) -> tuple[list[str], dict[str, tuple[int, str, str]]]:
    """A source's lines and, per top-level constant whose value sits on one line of its own,
    (line index, the text before the value, the text after it)."""
    lines = text.splitlines(keepends=True)
    spots: dict[str, tuple[int, str, str]] = {}
    used: dict[int, int] = {}
    tree = _parse(text, file)
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, v = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, v = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or target.id in spots:
            continue
        if v.end_lineno != v.lineno or v.end_col_offset is None:
            continue
        line = lines[v.lineno - 1]
        spots[target.id] = (v.lineno - 1, _bytes_cut(line, 0, v.col_offset), _bytes_cut(line, v.end_col_offset, None))
        used[v.lineno - 1] = used.get(v.lineno - 1, 0) + 1
    # two constants on one line (``A = 1; B = 2``) are left to the general path
    return lines, {name: spot for name, spot in spots.items() if used[spot[0]] == 1}


def _render_lines(text: str, values: Mapping[str, KnobValue], file: str) -> list[str] | None:
    """The source's lines with ``values`` rendered in, or None when the layout cannot say
    (a value over several lines, two on a line, a name not found: the general path decides)."""
    lines, spots = _layout(text, file)
    if any(name not in spots for name in values):
        return None
    out = list(lines)
    for name, value in values.items():
        index, before, after = spots[name]
        out[index] = before + format_value(value) + after
    return out


def _bytes_cut(line: str, start: int, end: int | None) -> str:
    # ast offsets are UTF-8 byte offsets.
    return line.encode()[start:end].decode()


def unified_diff(path: str, old: str, new: str) -> str:
    """A git-apply compatible diff of one file ('' when unchanged)."""
    if old == new:
        return ""
    diff = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    out = []
    for line in diff:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return f"diff --git a/{path} b/{path}\n" + "".join(out)


def _replaced_lines_diff(path: str, old: list[str], new: list[str]) -> str | None:
    """``unified_diff`` for two line lists of equal length that differ only line by line,
    without its sequence matching (what it would print; None where that is not sure:
    a changed last line without a newline)."""
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    if not changed:
        return ""
    if any(not old[i].endswith("\n") or not new[i].endswith("\n") for i in changed):
        return None
    context = 3
    groups: list[list[int]] = [[changed[0]]]
    for i in changed[1:]:
        if i - groups[-1][-1] - 1 > 2 * context:
            groups.append([i])
        else:
            groups[-1].append(i)
    out = [f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"]
    for group in groups:
        start, stop = max(0, group[0] - context), min(len(old), group[-1] + 1 + context)
        span = f"{start + 1},{stop - start}" if stop - start != 1 else f"{start + 1}"
        out.append(f"@@ -{span} +{span} @@\n")
        i = start
        while i < stop:
            if i not in group:
                out.append(" " + old[i])
                i += 1
                continue
            j = i
            while j < stop and j in group and (j == i or j - 1 in group):
                j += 1
            out += ["-" + line for line in old[i:j]] + ["+" + line for line in new[i:j]]
            i = j
    return "".join(out)


def knob_patch(
    target: Target, values: Mapping[str, KnobValue], sources: Mapping[str, str] | None = None
) -> str:
    """The patch that sets ``values`` in the editable files (read from ``sources`` or the folder)."""
    by_file: dict[str, dict[str, KnobValue]] = {}
    for name, value in values.items():
        knob = target.knobs.get(name)
        if knob is None:
            known = ", ".join(target.knobs) or "none"
            raise ConfigError(f"unknown knob {name!r} (known: {known})")
        if not knob.contains(value):
            raise ConfigError(f"knob {name}: {value!r} is outside its range in {CONFIG_FILE}")
        by_file.setdefault(knob.file, {})[name] = value
    parts = []
    for file, file_values in sorted(by_file.items()):
        old = sources[file] if sources is not None else (target.root / file).read_text()
        lines = _render_lines(old, file_values, file)
        quick = _replaced_lines_diff(file, _layout(old, file)[0], lines) if lines is not None else None
        parts.append(quick if quick is not None else unified_diff(file, old, render_knobs(old, file_values, file)))
    return "".join(parts)



def command_placeholders(command: str) -> list[str]:
    """The ``{name}`` placeholders of a run command, in order (``{{``, ``}}``, ``${VAR}`` are not)."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(command) if m.group(1) is not None]


def command_value(value: KnobValue) -> str:
    """A knob value as a command-line word (before quoting): 0.001, 3e-4, 8, True, or the string."""
    return value if isinstance(value, str) else format_value(value)


def render_command(command: str, values: Mapping[str, KnobValue]) -> str:
    """``command`` with each ``{name}`` replaced by its knob value, quoted for the shell."""

    def fill(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)[0]  # {{ -> {, }} -> }
        return shlex.quote(command_value(values[match.group(1)]))

    return _PLACEHOLDER.sub(fill, command)


def run_command_for(config: TargetConfig, sources: Mapping[str, str]) -> str:
    """The run command of a version: its placeholders filled from the knob files in ``sources``."""
    names = command_placeholders(config.target.run)
    if not names:
        return config.target.run
    values = {name: read_constant(sources[config.knobs[name].file], name, config.knobs[name].file) for name in names}
    return render_command(config.target.run, values)
