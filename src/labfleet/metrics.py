"""Where a run's metric and figures come from: the ``---`` block, a log pattern, or a metrics file.

Three sources, chosen in ``[target]`` (``target.TargetSpec``):

- the default: ``key: value`` lines after the last ``---`` line (autoresearch's
  summary block; the only source that can be signed);
- ``metric_pattern``: a regular expression with one group; its **last** match in the
  run's output is the metric (``'step \\d+: train loss [0-9.]+, val loss ([0-9.]+)'``
  for nanoGPT);
- ``metrics_file``: a JSON object the run writes, the metric under its name.

Extra figures: every other key of the block or the file, and ``[target.figures]``
(name -> pattern, last match) from the output. ``read`` never decides an outcome:
it returns the metric's text (or why there is none) and the figures, and
``harness.classify`` judges them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from labfleet.target import TargetSpec

METRICS_FILE_LIMIT = 1 << 20  # bytes of a metrics file read; a bigger one is not a metrics file
_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s+(\S.*?)\s*$")


@dataclass(frozen=True)
class Reading:
    """The metric as the run reported it (``text`` None when absent, with ``missing`` saying why)."""

    text: str | None
    missing: str = ""
    figures: dict[str, float | str] = field(default_factory=dict)
    block: dict[str, str] = field(default_factory=dict)  # the `---` block, for signature checks


def parse_block(output: str) -> dict[str, str]:
    """``key: value`` lines after the last ``---`` line (autoresearch's summary block)."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    block: dict[str, str] = {}
    for line in lines[starts[-1] + 1 :]:
        match = _KEY_VALUE.match(line)
        if match:
            block[match.group(1)] = match.group(2)
    return block


def number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def last_match(pattern: str, output: str) -> str | None:
    """The group of the last match of ``pattern`` (one group) in ``output``, stripped."""
    found = None
    for found in re.finditer(pattern, output, re.MULTILINE):  # noqa: B007 - the last one is wanted
        pass
    return None if found is None else (found.group(1) or "").strip()


def read_metrics_file(path: Path) -> str | None:
    """The text of a metrics file (None if the run wrote none); at most ``METRICS_FILE_LIMIT`` bytes."""
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return f.read(METRICS_FILE_LIMIT + 1).decode(errors="replace")


def read(spec: TargetSpec, output: str, metrics_text: str | None = None) -> Reading:
    """The metric and figures of a finished run, from the source ``spec`` names.

    ``metrics_text`` is the metrics file's content (``read_metrics_file``), for
    targets with ``metrics_file``.
    """
    name = spec.metric
    block = parse_block(output) if not (spec.metric_pattern or spec.metrics_file) else {}
    figures: dict[str, float | str] = {k: number(v) for k, v in block.items() if k != "signature"}
    for fig, pattern in spec.figures.items():
        text = last_match(pattern, output)
        if text is not None:
            figures[fig] = number(text)
    if spec.metric_pattern:
        text = last_match(spec.metric_pattern, output)
        missing = "" if text is not None else f"no line of the output matches metric_pattern {spec.metric_pattern!r}"
        return Reading(text, missing, figures)
    if spec.metrics_file:
        return _from_file(spec, metrics_text, figures)
    if name not in block:
        return Reading(None, f"no `{name}:` line after a `---` line", figures, block)
    return Reading(block[name], "", figures, block)


def _from_file(spec: TargetSpec, text: str | None, figures: dict[str, float | str]) -> Reading:
    where, name = spec.metrics_file, spec.metric
    if text is None:
        return Reading(None, f"the run wrote no {where}", figures)
    if len(text) > METRICS_FILE_LIMIT:
        return Reading(None, f"{where} is larger than {METRICS_FILE_LIMIT >> 20} MiB", figures)
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Reading(None, f"{where} is not valid JSON: {exc}", figures)
    if not isinstance(data, dict):
        return Reading(None, f"{where} is not a JSON object", figures)
    for key, value in data.items():
        if key != name and isinstance(key, str) and _is_number(value):
            figures.setdefault(key, float(value))
    if name not in data:
        return Reading(None, f"{where} has no key {name!r}", figures)
    value = data[name]
    if isinstance(value, str):
        return Reading(value.strip(), "", figures)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return Reading(json.dumps(value)[:40], "", figures)
    return Reading(repr(float(value)) if math.isfinite(value) else str(value), "", figures)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
