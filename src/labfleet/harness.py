"""The harness: runs one experiment where it lands and returns a result that can be trusted.

It is the only code that touches the training process. Steps, in order:

1. materialize the version in a fresh run directory: ``git archive`` of the
   commit, plus the experiment's patch (which may touch only editable files);
2. check the frozen files' hashes against the recorded ones (before and after);
3. run ``setup`` once per host, cached by the frozen hashes and the command;
4. run ``run`` in its own process group with LABFLEET_* variables, output to
   ``run.log``, the whole group killed at the hard timeout;
5. parse the ``---`` block and classify the outcome.

The result is written to ``result.json`` in the run directory before returning,
so whoever started the harness can collect it later even if it was not waiting.
``python -m labfleet.harness REQUEST.json`` does the same from a request file.

Signed targets (``signed = true``): the harness passes a one-time key through a pipe
(LABFLEET_SIGNING_FD names its descriptor); the target's frozen launcher reads it and
closes the pipe before editable code runs, and the frozen evaluation prints
``signature: HMAC-SHA256(key, "<metric>=<value>")`` after the metric line. A metric
without a valid signature is ``suspect``. Targets with an ``[evaluate]`` evaluator get
their metric from a separate frozen process instead (see ``labfleet.integrity``).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from labfleet import integrity, workspace
from labfleet.errors import ConfigError, HarnessError, LabfleetError, PatchError
from labfleet.target import CONFIG_FILE, TargetConfig, TargetSpec, parse_config

RESULT_FILE = "result.json"
LOG_FILE = "run.log"
SOURCE_DIR = "src"
SETUP_DONE = "setup-done.json"
KILL_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 40


class Outcome(enum.StrEnum):
    OK = "ok"
    CRASHED = "crashed"  # non-zero exit
    TIMEOUT = "timeout"  # killed at the hard timeout
    NO_METRIC = "no_metric"  # finished but printed no metric
    NAN = "nan"  # the metric or the loss was not finite (the run printed FAIL)
    REJECTED = "rejected"  # patch does not apply / touches non-editable files / frozen files changed
    SUSPECT = "suspect"  # a metric line that did not come from the frozen code path
    SETUP_FAILED = "setup_failed"  # the target's setup command failed: not the experiment's fault


def default_cache_root() -> Path:
    return Path(os.environ.get("LABFLEET_CACHE", Path.home() / ".cache" / "labfleet"))


@dataclass(frozen=True)
class RunRequest:
    """What to run: a version of a target, a fidelity, and where."""

    target_dir: Path  # the target's git repo
    run_dir: Path  # fresh folder for this run
    commit: str = "HEAD"  # the version; the patch applies on top of it
    patch: str = ""
    seed: int = 0
    budget_seconds: float | None = None  # None: the target's budget
    device: str = "cpu"  # cpu, cuda, cuda:N
    threads: int = 1
    cache_root: Path | None = None  # setup cache; default ~/.cache/labfleet
    # Hashes the frozen files must have; None: take them from ``commit`` (before the patch).
    frozen_hashes: dict[str, str] | None = None
    # Measure the target's [holdout] metric too (kept and validated versions only).
    holdout: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRequest:
        paths = {"target_dir", "run_dir", "cache_root"}
        return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in data.items()})


@dataclass
class RunResult:
    """One run's record: JSON-serializable, written to ``result.json``."""

    outcome: Outcome
    reason: str = ""  # one line: why it is not ok
    metric_name: str = ""
    metric: float | None = None
    figures: dict[str, float | str] = field(default_factory=dict)
    commit: str = ""  # the version that ran (parent + patch)
    seed: int = 0
    budget_seconds: float = 0.0
    device: str = "cpu"
    threads: int = 1
    exit_code: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    run_seconds: float = 0.0  # the run command's wall time
    setup_seconds: float = 0.0  # 0 when the setup cache was used
    setup_cached: bool = False
    log_path: str = ""
    log_tail: str = ""
    frozen_hashes: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # warnings that do not change the outcome
    # The [holdout] metric when the request asked for it. Never shown to researchers: the
    # session stores it apart from the run's record (integrity.holdout_of_result reads it).
    holdout: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        if self.metric is not None and not math.isfinite(self.metric):
            data["metric"] = None  # JSON has no NaN; the outcome says it
        if self.holdout is not None and not math.isfinite(self.holdout):
            data["holdout"] = None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{**data, "outcome": Outcome(data["outcome"])})


def read_result(run_dir: Path) -> RunResult | None:
    """The result a harness left in ``run_dir``, or None if it has not finished."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    return RunResult.from_json(json.loads(path.read_text()))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- output parsing

_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s+(\S.*?)\s*$")


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


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def sign(key: str, metric: str, value_text: str) -> str:
    return hmac.new(bytes.fromhex(key), f"{metric}={value_text}".encode(), hashlib.sha256).hexdigest()


def classify(
    output: str, exit_code: int, spec: TargetSpec, signing_key: str | None
) -> tuple[Outcome, str, float | None, dict[str, float | str]]:
    """Outcome, reason, metric and figures from a finished run's output and exit code."""
    block = parse_block(output)
    figures = {k: _number(v) for k, v in block.items() if k != "signature"}
    name = spec.metric
    failed = any(line.strip() == "FAIL" for line in output.splitlines())
    if exit_code != 0:
        if failed:
            return Outcome.NAN, "the run reported FAIL (loss not finite or exploding)", None, figures
        return Outcome.CRASHED, f"exited with code {exit_code}", None, figures
    if name not in block:
        mentioned = re.search(rf"^\s*{re.escape(name)}\s*[:=]", output, re.MULTILINE)
        if signing_key and mentioned:
            return Outcome.SUSPECT, f"{name} printed outside the frozen summary block", None, figures
        return Outcome.NO_METRIC, f"no `{name}:` line after a `---` line", None, figures
    value_text = block[name]
    value = _number(value_text)
    if not isinstance(value, float):
        return Outcome.NO_METRIC, f"{name} is not a number: {value_text!r}", None, figures
    if signing_key is not None:
        metric_lines = re.findall(rf"^\s*{re.escape(name)}\s*:", output, re.MULTILINE)
        signature = block.get("signature", "")
        if not hmac.compare_digest(signature, sign(signing_key, name, value_text)):
            why = "missing" if not signature else "invalid"
            return Outcome.SUSPECT, f"{name} line has a {why} signature", value, figures
        if len(metric_lines) > 1:
            return Outcome.SUSPECT, f"{name} printed {len(metric_lines)} times", value, figures
    if not math.isfinite(value) or failed:
        return Outcome.NAN, f"{name} is {value_text}", value, figures
    return Outcome.OK, "", value, figures


# --------------------------------------------------------------------------- processes


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                # the leader exited; children may linger in the group
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_command(
    command: str, cwd: Path, env: dict[str, str], log_path: Path, timeout: float, pass_fds: tuple[int, ...] = ()
) -> tuple[int | None, float]:
    """Run a shell command in its own process group, output to ``log_path``.

    Returns (exit code or None if killed at the timeout, wall seconds). Nothing the
    command started survives it.
    """
    start = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:
            _kill_group(proc)
            raise
        _kill_group(proc)
    return code, time.monotonic() - start


def _base_env(request: RunRequest, budget: float, cache_dir: Path) -> dict[str, str]:
    env = integrity.run_env(os.environ)
    # `python` in the target's commands is the interpreter labfleet runs under.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    threads = str(request.threads)
    env.update(
        LABFLEET_BUDGET_SECONDS=f"{budget:g}",
        LABFLEET_SEED=str(request.seed),
        LABFLEET_DEVICE=request.device,
        LABFLEET_THREADS=threads,
        LABFLEET_CACHE_DIR=str(cache_dir),
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _setup_env(env: dict[str, str], cache_dir: Path) -> dict[str, str]:
    """Setup also writes the evaluator-only data, in a folder the run is never told about."""
    return {**env, integrity.EVAL_DIR_ENV: str(integrity.eval_data_dir(cache_dir))}


def setup_cache_dir(cache_root: Path | None, spec: TargetSpec, frozen_hashes: dict[str, str]) -> Path:
    """Where a target's setup outputs live on this host: keyed by frozen hashes + command."""
    payload = json.dumps({"setup": spec.setup, "frozen": frozen_hashes}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return (cache_root or default_cache_root()) / f"{spec.name}-{key}"


def ensure_setup(
    spec: TargetSpec, source: Path, cache_dir: Path, env: dict[str, str], timeout: float = 3600.0
) -> tuple[bool, float, str]:
    """Run the target's setup once per cache key; (ok, seconds spent, reason).

    A file lock makes concurrent workers on one host wait for a single setup.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    done = cache_dir / SETUP_DONE
    if done.is_file() or not spec.setup:
        return True, 0.0, ""
    with (cache_dir / "setup.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():  # another worker finished it while we waited
            return True, 0.0, ""
        log = cache_dir / "setup.log"
        log.write_bytes(b"")
        code, seconds = run_command(spec.setup, source, env, log, timeout)
        if code != 0:
            why = "timed out" if code is None else f"exited with code {code}"
            tail = _log_tail(log, 1)
            return False, seconds, f"setup `{spec.setup}` {why}" + (f": {tail}" if tail else "")
        _write_json_atomic(done, {"command": spec.setup, "seconds": seconds, "at": time.time()})
        return True, seconds, ""


def prepare(target_dir: Path, commit: str = "HEAD", cache_root: Path | None = None) -> tuple[Path, float, bool]:
    """Run (or reuse) the setup of a target version; returns (cache dir, seconds, was cached)."""
    commit = workspace.resolve(target_dir, commit)
    spec = parse_config(workspace.show_file(target_dir, commit, CONFIG_FILE)).target
    with tempfile.TemporaryDirectory(prefix="labfleet-setup-") as tmp:
        source = Path(tmp) / SOURCE_DIR
        workspace.export_tree(target_dir, commit, source)
        hashes = workspace.file_hashes(source, spec.frozen)
        cache_dir = setup_cache_dir(cache_root, spec, hashes)
        request = RunRequest(target_dir=target_dir, run_dir=Path(tmp))
        cached = (cache_dir / SETUP_DONE).is_file()
        env = _setup_env(_base_env(request, spec.budget_seconds, cache_dir), cache_dir)
        ok, seconds, reason = ensure_setup(spec, source, cache_dir, env)
    if not ok:
        raise HarnessError(reason)
    return cache_dir, seconds, cached


# --------------------------------------------------------------------------- the run


def run_experiment(request: RunRequest) -> RunResult:
    """Run one experiment (steps 1-5 above); always returns a result and writes result.json."""
    run_dir = request.run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise HarnessError(f"run directory {run_dir} is not empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / LOG_FILE
    log_path.touch()
    result = RunResult(
        outcome=Outcome.REJECTED,
        seed=request.seed,
        device=request.device,
        threads=request.threads,
        started_at=time.time(),
        log_path=str(log_path),
    )
    try:
        result = _run(request, result, run_dir, log_path)
    except (PatchError, ConfigError) as exc:
        result = replace(result, outcome=Outcome.REJECTED, reason=str(exc))
    result.ended_at = time.time()
    result.log_tail = integrity.redact(_log_tail(log_path), _holdout_names(request))
    _write_json_atomic(run_dir / RESULT_FILE, result.to_json())
    return result


def _holdout_names(request: RunRequest) -> list[str]:
    """The holdout metric's name, to keep it out of log tails (researchers read those)."""
    try:
        config = parse_config(workspace.show_file(request.target_dir, request.commit, CONFIG_FILE))
    except LabfleetError:
        return []
    return [config.holdout.metric] if config.holdout else []


def _run(request: RunRequest, result: RunResult, run_dir: Path, log_path: Path) -> RunResult:
    repo = request.target_dir
    parent = workspace.resolve(repo, request.commit)
    config = parse_config(workspace.show_file(repo, parent, CONFIG_FILE))
    spec = config.target
    result.metric_name = spec.metric
    budget = request.budget_seconds or spec.budget_seconds
    result.budget_seconds = budget
    # A larger budget keeps the same allowance for start-up and evaluation.
    timeout = spec.timeout_seconds - spec.budget_seconds + budget

    # 1. materialize
    commit = parent
    if request.patch:
        commit = workspace.commit_patch(repo, parent, request.patch, "labfleet experiment", spec.editable)
        if workspace.added_lines_mention(request.patch, spec.metric):
            result.flags.append(f"the patch mentions the metric name {spec.metric!r}")
    result.commit = commit
    source = run_dir / SOURCE_DIR
    workspace.export_tree(repo, commit, source)

    # 2. frozen files, before
    recorded = request.frozen_hashes
    if recorded is None:  # the parent version's frozen files are the record
        recorded = workspace.commit_file_hashes(repo, parent, spec.frozen)
    hashes = workspace.file_hashes(source, spec.frozen)
    result.frozen_hashes = hashes
    changed = [p for p in spec.frozen if hashes.get(p) != recorded.get(p)]
    if changed:
        result.reason = f"frozen file {changed[0]} differs from its recorded hash"
        return result

    # 3. setup, cached per host by frozen hashes + command
    cache_dir = setup_cache_dir(request.cache_root, spec, hashes)
    env = _base_env(request, budget, cache_dir)
    ok, seconds, reason = ensure_setup(spec, source, cache_dir, _setup_env(env, cache_dir))
    result.setup_seconds, result.setup_cached = seconds, seconds == 0.0
    if not ok:
        result.outcome, result.reason = Outcome.SETUP_FAILED, reason
        return result
    _flag_data_paths(request.patch, cache_dir, result)

    # 4. run under the hard timeout (beside the frozen evaluator, if the target has one)
    private = {**_setup_env(env, cache_dir), **({integrity.HOLDOUT_ENV: "1"} if request.holdout else {})}
    evaluator = integrity.Evaluator(config.evaluate.command, source, private) if config.evaluate else None
    key, key_fd = integrity.signing_channel() if spec.signed else (None, None)
    fds = tuple(fd for fd in (key_fd, evaluator and evaluator.run_fd) if fd is not None)
    if key_fd is not None:
        env[integrity.SIGNING_FD_ENV] = str(key_fd)
    if evaluator is not None:
        env[integrity.EVAL_FD_ENV] = str(evaluator.run_fd)
    try:
        if evaluator is not None:
            evaluator.start()
        code, seconds = run_command(spec.run, source, env, log_path, timeout, pass_fds=fds)
    finally:
        if key_fd is not None:
            os.close(key_fd)
        eval_code, eval_output = evaluator.finish() if evaluator is not None else (None, "")
    result.exit_code, result.run_seconds = code, seconds

    # 2'. frozen files, after: a run that changed them is not trusted
    after = workspace.file_hashes(source, spec.frozen)
    changed = [p for p in spec.frozen if after.get(p) != hashes.get(p)]
    if code is None:
        result.outcome, result.reason = Outcome.TIMEOUT, f"killed after {timeout:g} s (hard timeout)"
        return result
    if changed:
        result.reason = f"frozen file {changed[0]} was modified during the run"
        return result

    # 5. parse
    output = log_path.read_text(errors="replace")
    if evaluator is not None:  # the run's own metric line is never taken, whatever it says
        output = re.sub(rf"^\s*{re.escape(spec.metric)}\s*:.*$", "", output, flags=re.MULTILINE)
    outcome, reason, metric, figures = classify(output, code, spec, key)
    if evaluator is not None:
        outcome, reason, metric, figures = _from_evaluator(
            (outcome, reason, metric, figures), eval_code, eval_output, config)
    result.outcome, result.reason, result.metric, result.figures = outcome, reason, metric, figures
    if request.holdout and config.holdout is not None and outcome == Outcome.OK:
        result.holdout = _holdout(config, source, private, eval_output, timeout)
    return result


def _flag_data_paths(patch: str, cache_dir: Path, result: RunResult) -> None:
    """Flag a patch whose added lines name the evaluator's data (its files or its variable)."""
    if not patch:
        return
    data_dir = integrity.eval_data_dir(cache_dir)
    names = [integrity.EVAL_DIR_ENV, data_dir.name]
    if data_dir.is_dir():
        names += [p.name for p in data_dir.iterdir() if p.is_file()]
    named = integrity.data_path_mentions(patch, names)
    if named:
        result.flags.append(f"the patch names evaluation-only data: {', '.join(named)}")


def _from_evaluator(
    from_run: tuple[Outcome, str, float | None, dict[str, float | str]],
    eval_code: int | None, eval_output: str, config: TargetConfig,
) -> tuple[Outcome, str, float | None, dict[str, float | str]]:
    """The outcome when a frozen evaluator measures: its block has the metric, the run's the figures.

    A failed run stays failed (crashed, nan); the run's own metric line is never taken.
    """
    outcome, reason, _metric, figures = from_run
    name = config.target.metric
    hidden = {name, "signature", *( [config.holdout.metric] if config.holdout else [])}
    figures = {k: v for k, v in figures.items() if k not in hidden}
    if outcome not in (Outcome.OK, Outcome.NO_METRIC):
        return outcome, reason, None, figures
    block = parse_block(eval_output)
    last = next((ln for ln in reversed(eval_output.splitlines()) if ln.strip()), "")
    if "suspect" in block:
        return Outcome.SUSPECT, f"frozen evaluator: {block['suspect']}", None, figures
    if eval_code != 0 or name not in block:
        why = "was killed" if eval_code is None else f"exited with code {eval_code}"
        return Outcome.NO_METRIC, f"the frozen evaluator {why} without {name}" + (f": {last}" if last else ""), \
            None, figures
    value = _number(block[name])
    if not isinstance(value, float):
        return Outcome.NO_METRIC, f"{name} is not a number: {block[name]!r}", None, figures
    extra = {k: _number(v) for k, v in block.items() if k not in hidden and k != "suspect"}
    figures = {**figures, **extra}
    if not math.isfinite(value):
        return Outcome.NAN, f"{name} is {block[name]}", value, figures
    return Outcome.OK, "", value, figures


def _holdout(config: TargetConfig, source: Path, env: dict[str, str], eval_output: str, timeout: float) -> float | None:
    """The holdout metric: from the evaluator's block, or from the holdout command's own block."""
    assert config.holdout is not None
    name = config.holdout.metric
    output = eval_output
    if config.holdout.command:
        with tempfile.TemporaryDirectory(prefix="labfleet-holdout-") as tmp:
            log = Path(tmp) / "holdout.log"  # never in the run directory: researchers read that
            code, _ = run_command(config.holdout.command, source, env, log, timeout)
            output = log.read_text(errors="replace") if code == 0 else ""
    value = _number(parse_block(output).get(name, ""))
    return value if isinstance(value, float) and math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    """``python -m labfleet.harness REQUEST.json``: run it, write result.json, print it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m labfleet.harness REQUEST.json", file=sys.stderr)
        return 2
    # SIGTERM (a cancel) unwinds through run_command, which kills the training run's group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    request = RunRequest.from_json(json.loads(Path(args[0]).read_text()))
    result = run_experiment(request)
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
