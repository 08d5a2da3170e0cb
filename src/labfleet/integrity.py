"""What keeps a metric honest beyond the frozen-file hashes: keys, the frozen evaluator, the holdout.

Three mechanisms, each opt-in per target (the bundled tinygpt uses the evaluator and the
holdout; the test fixtures use signing):

- **Signing** (``signed = true``): the harness writes a one-time key into a pipe and
  gives the run only the pipe's file descriptor number (``LABFLEET_SIGNING_FD``). The
  target's frozen launcher reads the key and closes the pipe before any editable code
  runs. The key is never in an environment block (``/proc/self/environ`` and the
  parent's hold only the fd number), the pipe is empty once read, and after the close
  there is no ``/proc/self/fd`` entry for it.
- **A frozen evaluator** (``[evaluate] command``): a second process that the harness
  starts beside the run, never a child of it. The two are connected by a socket pair
  (``LABFLEET_EVAL_FD`` in each one's environment). The evaluator owns the evaluation
  data (``LABFLEET_EVAL_DIR``, given to setup and to the evaluator, never to the run),
  sends the run input windows, receives logits, and computes the metric with its own
  code; its ``---`` block reaches the harness through a pipe only the harness reads,
  so the run can neither see the data's targets nor write the metric line. A
  ``suspect: <reason>`` line in its block (tinygpt's causality probe) makes the run
  ``suspect``.
- **The holdout** (``[holdout]``): a second frozen metric, measured only when a run
  request asks for it (kept and validated versions), reported by the evaluator (or a
  separate ``command``) and stored apart from everything researchers see.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from labfleet.enums import Role

SIGNING_FD_ENV = "LABFLEET_SIGNING_FD"
EVAL_FD_ENV = "LABFLEET_EVAL_FD"
EVAL_DIR_ENV = "LABFLEET_EVAL_DIR"
HOLDOUT_ENV = "LABFLEET_HOLDOUT"
# Every variable that names a secret or the evaluator's data; none of them reaches the run.
PRIVATE_ENV = ("LABFLEET_SIGNING_KEY", EVAL_DIR_ENV, HOLDOUT_ENV)
EVALUATOR_OUTPUT_LIMIT = 1 << 20  # bytes of the evaluator's output the harness keeps
EVALUATOR_GRACE_SECONDS = 10.0  # after the run ends, how long the evaluator may take to finish


def signing_channel() -> tuple[str, int]:
    """A one-time key and the read end of a pipe that holds it (the write end is closed)."""
    key = secrets.token_hex(32)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, key.encode())
    finally:
        os.close(write_fd)
    return key, read_fd


def read_signing_key(environ: dict[str, str] | None = None) -> str | None:
    """For a frozen launcher: the key from the inherited pipe, which is then closed.

    Call it before any editable code runs. Launchers that cannot import labfleet do the
    same in four lines (see tests/conftest.py's LAUNCH).
    """
    env = os.environ if environ is None else environ
    fd = env.pop(SIGNING_FD_ENV, None)
    if not fd:
        return None
    try:
        return os.read(int(fd), 256).decode() or None
    finally:
        os.close(int(fd))


def eval_data_dir(cache_dir: Path) -> Path:
    """Where a target's setup writes the data only its frozen evaluator may read.

    A sibling of the setup cache, not inside it, so a sandbox can show the run the cache
    and hide this folder; without a sandbox the run is only never told the path.
    """
    return cache_dir.with_name(cache_dir.name + "-eval")


def run_env(env: Mapping[str, str]) -> dict[str, str]:
    """The run's environment: the harness's, without anything private to the evaluation."""
    return {k: v for k, v in env.items() if k not in PRIVATE_ENV}


class Evaluator:
    """A target's frozen evaluator, started before the run and connected to it by a socket pair.

    ``start()`` launches it (its own process group, stdout to a pipe only this object
    reads); ``run_fd`` is the run's end of the socket, to pass to the run with
    ``pass_fds``; ``close_run_end()`` drops the harness's copy once the run started,
    so the evaluator sees EOF when the run ends; ``finish()`` returns (exit code or
    None if it had to be killed, its output).
    """

    def __init__(self, command: str, cwd: Path, env: Mapping[str, str]) -> None:
        self.command, self.cwd, self.env = command, cwd, dict(env)
        self._ours, self._theirs = socket.socketpair()
        self.run_fd = self._theirs.fileno()
        self._proc: subprocess.Popen[bytes] | None = None
        self._chunks: list[bytes] = []
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        fd = self._ours.fileno()
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", self.command],
            cwd=self.cwd,
            env={**self.env, EVAL_FD_ENV: str(fd)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,
        )
        self._ours.close()  # the evaluator holds its end now
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        kept = 0
        for chunk in iter(lambda: self._proc.stdout.read(65536), b""):  # type: ignore[union-attr]
            if kept < EVALUATOR_OUTPUT_LIMIT:
                self._chunks.append(chunk[: EVALUATOR_OUTPUT_LIMIT - kept])
                kept += len(chunk)

    def close_run_end(self) -> None:
        self._theirs.close()

    def finish(self, grace: float = EVALUATOR_GRACE_SECONDS) -> tuple[int | None, str]:
        self.close_run_end()
        self._ours.close()
        if self._proc is None:
            return None, ""
        code: int | None
        try:
            code = self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # nothing it started outlives it
        except ProcessLookupError:
            pass
        if code is None:
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code, b"".join(self._chunks).decode(errors="replace")


def redact(text: str, names: Iterable[str]) -> str:
    """``text`` without the lines that name any of ``names`` (the holdout metric, for log tails)."""
    names = [n for n in names if n]
    if not names:
        return text
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in names))


def data_path_mentions(patch: str, names: Iterable[str]) -> list[str]:
    """The evaluation-only names (files, variables) that lines added by ``patch`` mention."""
    added = [ln[1:] for ln in patch.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return sorted({n for n in names if n and any(n in line for line in added)})


# --------------------------------------------------------------------------- the holdout, read side


def holdout_of_result(run_dir: str | Path | None) -> float | None:
    """The holdout value a harness left in a run directory's result.json, if any."""
    if not run_dir:
        return None
    path = Path(run_dir) / "result.json"
    try:
        value = json.loads(path.read_text()).get("holdout")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def divergence_warning(rows: list[dict[str, Any]], direction: str) -> str:
    """A sentence when the lineage's validation gain is not matched on the holdout, else ''.

    ``rows`` are the lineage, oldest first, each with ``metric`` and ``holdout``. The
    warning fires when the holdout improved by less than half of what validation did
    (or got worse) from the first version measured on both to the last.
    """
    both = [r for r in rows if r.get("metric") is not None and r.get("holdout") is not None]
    if len(both) < 2:
        return ""
    sign = 1.0 if direction == "minimize" else -1.0
    first, last = both[0], both[-1]
    val_gain = sign * (first["metric"] - last["metric"])
    hold_gain = sign * (first["holdout"] - last["holdout"])
    if val_gain <= 0 or hold_gain >= 0.5 * val_gain:
        return ""
    return (f"warning: validation improved by {val_gain:.6f} from e{first['experiment']} to e{last['experiment']} "
            f"but the holdout by {hold_gain:+.6f}: the lineage may be overfitting the validation set")


# The runs of kept and validated versions; SessionLoop._job sets RunRequest.holdout for these roles.
HOLDOUT_ROLES = (Role.CALIBRATE, Role.VALIDATE)


def lineage_holdout(ledger: Any, session_id: int, direction: str) -> dict[str, Any]:
    """Validation against holdout for the lineage (baseline, then every keep), for people only.

    Holdout values still only in run directories (result.json) are recorded in the
    ledger's holdout table first, so this works whichever process collected the runs.
    Never call it from anything a researcher reads (results, status, show, MCP, prompts).
    """
    from labfleet.records import Decision, RunStatus  # the read side, imported where needed

    for run in ledger.runs(session_id):
        if run.role in HOLDOUT_ROLES and run.status == RunStatus.DONE:
            value = holdout_of_result(run.run_dir)
            if value is not None:
                ledger.record_holdout(run.id, value)
    values = ledger.holdout_values(session_id)
    rows = []
    for exp in ledger.experiments(session_id):
        if exp.decision in (Decision.BASELINE, Decision.KEPT):
            got = values.get(exp.id, [])
            rows.append({"experiment": exp.id, "description": exp.description, "metric": exp.metric,
                         "holdout": sum(got) / len(got) if got else None, "holdout_runs": len(got)})
    return {"lineage": rows, "warning": divergence_warning(rows, direction)}


def holdout_lines(view: dict[str, Any], metric: str, holdout_metric: str) -> list[str]:
    """The lineage's validation and holdout as lines of text (``best --holdout``, the report)."""
    lines = [f"e{r['experiment']}: {metric} {_fmt(r['metric'])}, {holdout_metric} {_fmt(r['holdout'])}"
             + (f" ({r['holdout_runs']} runs)" if r["holdout_runs"] > 1 else "") + f"  [{r['description']}]"
             for r in view["lineage"]]
    if not any(r["holdout"] is not None for r in view["lineage"]):
        lines.append(f"no {holdout_metric} measured yet (it is measured on kept and validated versions)")
    return lines + ([view["warning"]] if view["warning"] else [])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"
