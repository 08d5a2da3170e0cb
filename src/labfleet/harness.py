"""The harness: runs one experiment where it lands and returns a result that can be trusted.

It is the only code that touches the training process. Steps, in order:

1. materialize the version in a fresh run directory: ``git archive`` of the
   commit, plus the experiment's patch (which may touch only editable files);
2. check the frozen files' hashes against the recorded ones (before and after);
3. run ``setup`` once per host, cached by the frozen hashes and the command; what it
   writes into the target folder is captured, hashed, verified before every run and
   linked into each run's snapshot at the same paths (``setup_outputs``);
4. run ``run`` in a box (``sandbox``: own PID namespace, read-only filesystem but
   the run directory, no network, the slot's CPUs; a process group where no box
   can be built) with LABFLEET_* variables, output capped into ``run.log``
   (``logs``), the box killed once the run's compute passes budget + evaluation
   allowance (``over_budget``: measured by the harness, not reported by the run:
   CPU seconds per thread on CPU slots, so a loaded machine does not count against
   a run; wall seconds on GPUs) or at the hard timeout;
5. read the metric (the ``---`` block, a log pattern or a metrics file: ``metrics``)
   and classify the outcome.

The result is written to ``result.json`` in the run directory before returning,
after the box is empty, so whoever started the harness can collect it later even
if it was not waiting.
``python -m labfleet.harness REQUEST.json`` does the same from a request file.

Signed targets (``signed = true``): the harness passes a one-time key through a pipe
(LABFLEET_SIGNING_FD names its descriptor); the target's frozen launcher reads it and
closes the pipe before editable code runs, and the frozen evaluation prints
``signature: HMAC-SHA256(key, "<metric>=<value>")`` after the metric line. A metric
without a valid signature is ``suspect``. Targets with an ``[evaluate]`` evaluator get
their metric from a separate frozen process instead (see ``labfleet.integrity``).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labfleet import integrity, logs, metrics, sandbox, setup_outputs, workspace
from labfleet.enums import Outcome
from labfleet.errors import ConfigError, HarnessError, LabfleetError, PatchError
from labfleet.records import RunRequest, RunResult
from labfleet.target import CONFIG_FILE, STATE_DIR, TargetConfig, TargetSpec, parse_config, run_command_for

RESULT_FILE = "result.json"
LOG_FILE = "run.log"
SOURCE_DIR = "src"
SETUP_DONE = "setup-done.json"
KILL_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 40
# Without target.eval_allowance_seconds a run may use max(15 s, budget / 2) beyond its
# budget (CPU seconds per thread on CPU slots, wall seconds on GPUs): interpreter and
# torch start-up and the evaluation.
DEFAULT_ALLOWANCE_SECONDS = 15.0
DEFAULT_ALLOWANCE_SHARE = 0.5


def default_cache_root() -> Path:
    return Path(os.environ.get("LABFLEET_CACHE", Path.home() / ".cache" / "labfleet"))


def read_result(run_dir: Path) -> RunResult | None:
    """The result a harness left in ``run_dir``, or None if it has not finished."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    return RunResult.from_json(json.loads(path.read_text()))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temp file and ``os.replace``; whatever a run planted at either name
    (a symlink into the ledger, a folder) is removed first, never written through."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    for planted in (tmp, path):
        if planted.is_dir() and not planted.is_symlink():
            shutil.rmtree(planted)
        elif planted.is_symlink() or (planted.exists() and planted is tmp):
            planted.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- output parsing

parse_block = metrics.parse_block  # the `---` block (also the default metric source)


def sign(key: str, metric: str, value_text: str) -> str:
    return hmac.new(bytes.fromhex(key), f"{metric}={value_text}".encode(), hashlib.sha256).hexdigest()


def classify(
    output: str, exit_code: int, spec: TargetSpec, signing_key: str | None, metrics_text: str | None = None
) -> tuple[Outcome, str, float | None, dict[str, float | str]]:
    """Outcome, reason, metric and figures from a finished run's output and exit code.

    The metric comes from the source the target names (``metrics.read``);
    ``metrics_text`` is the content of its ``metrics_file``, if it has one.
    """
    reading = metrics.read(spec, output, metrics_text)
    block, figures = reading.block, reading.figures
    name = spec.metric
    failed = any(line.strip() == "FAIL" for line in output.splitlines())
    if exit_code != 0:
        if failed:
            return Outcome.NAN, "the run reported FAIL (loss not finite or exploding)", None, figures
        return Outcome.CRASHED, f"exited with code {exit_code}", None, figures
    if reading.text is None:
        mentioned = re.search(rf"^\s*{re.escape(name)}\s*[:=]", output, re.MULTILINE)
        if signing_key and mentioned:
            return Outcome.SUSPECT, f"{name} printed outside the frozen summary block", None, figures
        return Outcome.NO_METRIC, reading.missing, None, figures
    value_text = reading.text
    value = metrics.number(value_text)
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
    return logs.tail_lines(path, lines)


def _kill_group(proc: subprocess.Popen[bytes], box_pid: int | None = None) -> None:
    """Kill the box (its init: the kernel then kills every process in it) or the process group.

    Without a box: SIGTERM the group, then SIGKILL whatever is left after a grace period.
    """
    if box_pid is not None and proc.poll() is None:
        # bwrap (our child, not yet reaped) is the init's parent: the pid cannot be reused yet
        try:
            os.kill(box_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
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


_POLL_SECONDS = 0.1
_DRAIN_SECONDS = 1.0  # after the run: how long output still in flight is read


def _pump(fds: dict[int, logs.CappedLog | bytearray], timeout: float) -> list[int]:
    """Read whichever fds are ready for up to ``timeout`` s; returns the fds that hit EOF."""
    ready, _, _ = select.select(list(fds), [], [], max(0.0, timeout))
    closed = []
    for fd in ready:
        data = os.read(fd, 1 << 16)
        sink = fds[fd]
        if not data:
            closed.append(fd)
        elif isinstance(sink, bytearray):
            sink += data[: 4096 - len(sink)]
        else:
            sink.write(data)
    return closed


@dataclass(frozen=True)
class Finish:
    """How a command ended, as the harness measured it."""

    code: int | None  # exit code; None when it was stopped
    seconds: float  # wall time
    cpu_seconds: float | None  # CPU time of every process it ran (sampled from /proc); None: unmeasured
    stopped: str = ""  # "", "timeout" or "budget"


def run_command(
    command: str, cwd: Path, env: dict[str, str], log_path: Path, timeout: float,
    box: sandbox.Box | None = None, pass_fds: tuple[int, ...] = (),
) -> tuple[int | None, float]:
    """Run a shell command (in ``box`` when given) in its own process group, output capped into ``log_path``.

    Returns (exit code or None if killed at the timeout, wall seconds). Nothing the
    command started survives it: with a box, its PID namespace dies with it; without
    one, the process group is killed.
    """
    finish = run_measured(command, cwd, env, log_path, timeout, box=box, pass_fds=pass_fds)
    return finish.code, finish.seconds


def run_measured(
    command: str, cwd: Path, env: dict[str, str], log_path: Path, timeout: float,
    box: sandbox.Box | None = None, budget_limit: float | None = None, cpu_threads: int | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Finish:
    """``run_command`` that also stops the command once its training compute passes ``budget_limit``.

    The compute is CPU seconds over ``cpu_threads`` when given (a loaded machine
    stretches the wall clock, not this), else wall seconds.
    """
    start = time.monotonic()
    deadline = start + timeout
    out_r, out_w = os.pipe()
    info_r = info_w = -1
    argv = ["/bin/sh", "-c", command]
    if box is not None:
        if sandbox.support().boxed:
            info_r, info_w = os.pipe()
        argv = sandbox.command(argv, box, info_fd=info_w if info_w >= 0 else None)
    info = bytearray()
    cpu: float | None = None
    stopped = ""
    with logs.CappedLog(log_path) as log:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out_w, stderr=subprocess.STDOUT,
                start_new_session=True, pass_fds=tuple(pass_fds) + ((info_w,) if info_w >= 0 else ()),
            )
        except BaseException:
            for fd in (out_r, info_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, info_w):
                if fd >= 0:
                    os.close(fd)
        fds: dict[int, logs.CappedLog | bytearray] = {out_r: log}
        if info_r >= 0:
            fds[info_r] = info
        box_pid: int | None = None
        code: int | None = None
        next_sample = start
        try:
            while True:
                for fd in _pump(fds, min(_POLL_SECONDS, deadline - time.monotonic())):
                    del fds[fd]
                    os.close(fd)
                if box_pid is None and info_r >= 0 and info_r not in fds:
                    box_pid = _child_pid(info)
                if proc.poll() is not None:
                    code = proc.returncode
                    break
                now = time.monotonic()
                if now >= next_sample:  # every process the run started descends from bwrap (or the shell)
                    sample = _tree_cpu_seconds(proc.pid)
                    cpu = sample if cpu is None or sample is None else max(cpu, sample)
                    next_sample = now + _CPU_SAMPLE_SECONDS
                if budget_limit is not None:
                    used = cpu / cpu_threads if cpu_threads and cpu is not None else now - start
                    if used > budget_limit:
                        stopped = "budget"
                        break
                if now >= deadline:
                    stopped = "timeout"
                    break
        finally:  # stopped, or an exception (a cancel's SIGTERM): kill the box
            if code is None:
                _kill_group(proc, box_pid if box_pid is not None else _child_pid(info))
            else:
                _kill_group(proc)  # the leader is gone: whatever it left in its group goes too
            _wait_box_gone(info)
            seconds = time.monotonic() - start
            # Output still in the pipe; a process that escaped (no box) may hold it open: bounded.
            drain_end = time.monotonic() + _DRAIN_SECONDS
            while fds and time.monotonic() < drain_end:
                for fd in _pump(fds, drain_end - time.monotonic()):
                    del fds[fd]
                    os.close(fd)
            for fd in fds:
                os.close(fd)
    return Finish(code, seconds, cpu, stopped)


_CPU_SAMPLE_SECONDS = 0.5
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of ``root`` and every live descendant, plus what they reaped (None without /proc)."""
    if not os.path.isdir(f"/proc/{root}/task"):
        return None
    ticks, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return ticks / _CLOCK_TICKS


def _wait_box_gone(info: bytearray, limit: float = KILL_GRACE_SECONDS) -> None:
    """Wait (bounded) until the box's init has left its PID namespace: the kernel has then
    killed every process in it, so nothing of the run can touch the run dir any more."""
    try:
        data = json.loads(bytes(info).decode())
        pid, ns = int(data["child-pid"]), int(data["pid-namespace"])
    except (ValueError, KeyError, TypeError):
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:  # a reused pid is in another namespace; an exited init has no namespace link
            if os.readlink(f"/proc/{pid}/ns/pid") != f"pid:[{ns}]":
                return
        except OSError:
            return
        time.sleep(0.01)


def _child_pid(info: bytearray) -> int | None:
    """The box's init pid from bwrap's --info-fd JSON (None until it has been written)."""
    try:
        return int(json.loads(bytes(info).decode())["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _base_env(request: RunRequest, budget: float, cache_dir: Path) -> dict[str, str]:
    env = integrity.run_env(os.environ)
    # `python` in the target's commands is the interpreter labfleet runs under.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    threads = str(request.threads)
    env.update(
        LABFLEET_BUDGET_SECONDS=f"{budget:g}",
        LABFLEET_SEED=str(request.seed),
        LABFLEET_DEVICE=sandbox.slot_device(request.device),
        LABFLEET_THREADS=threads,
        LABFLEET_CACHE_DIR=str(cache_dir),
        **sandbox.slot_env(request.device, request.threads),
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
    spec: TargetSpec, source: Path, cache_dir: Path, env: dict[str, str], timeout: float = 3600.0,
    notes: list[str] | None = None,
) -> tuple[bool, float, str]:
    """Run the target's setup once per cache key; (ok, seconds spent, reason).

    The setup runs in a scratch copy of ``source`` (a fresh export of the version);
    what it leaves there and in the cache dir is captured and hashed into the marker
    (see ``setup_outputs``). A marker whose outputs no longer match is not "done": the
    cache is cleared and the setup runs again, with a line in ``notes`` saying why.
    A file lock makes concurrent workers on one host wait for a single setup.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    done = cache_dir / SETUP_DONE
    if not spec.setup or _setup_intact(cache_dir)[0]:
        return True, 0.0, ""
    with (cache_dir / "setup.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        intact, problem = _setup_intact(cache_dir)
        if intact:  # another worker finished it while we waited
            return True, 0.0, ""
        if problem:
            line = f"{problem}: running setup `{spec.setup}` again"
            print(f"labfleet: {line}", file=sys.stderr, flush=True)
            if notes is not None:
                notes.append(line)
            setup_outputs.clear(cache_dir)
        done.unlink(missing_ok=True)
        work = cache_dir / setup_outputs.WORK_DIR
        if work.exists():
            setup_outputs.remove_tree(work)
        tree = work / SOURCE_DIR
        shutil.copytree(source, tree, symlinks=True)
        before = setup_outputs.stat_tree(tree)
        log = cache_dir / "setup.log"
        log.write_bytes(b"")
        try:
            code, seconds = run_command(spec.setup, tree, env, log, timeout)
            if code != 0:
                why = "timed out" if code is None else f"exited with code {code}"
                tail = _log_tail(log, 1)
                return False, seconds, f"setup `{spec.setup}` {why}" + (f": {tail}" if tail else "")
            keep = {*spec.editable, *spec.frozen, CONFIG_FILE}
            try:
                outputs = setup_outputs.capture(
                    tree, before, lambda rel: setup_outputs.sha256_file(source / rel), cache_dir, keep)
            except ValueError as exc:
                return False, seconds, f"setup `{spec.setup}`: {exc}"
        finally:
            setup_outputs.remove_tree(work)
        _write_json_atomic(done, {"command": spec.setup, "seconds": seconds, "at": time.time(),
                                  "outputs": outputs.to_json()})
        return True, seconds, ""


def _setup_intact(cache_dir: Path) -> tuple[bool, str]:
    """(True, '') when the marker says done and every recorded output is intact;
    (False, '') with no usable marker; (False, problem) when the outputs changed."""
    marker = setup_outputs.read_marker(cache_dir / SETUP_DONE)
    outputs = setup_outputs.Outputs.from_json(marker.get("outputs")) if marker else None
    if marker is None or outputs is None:
        return False, ""
    problem, refreshed = setup_outputs.verify(cache_dir, outputs)
    if problem:
        return False, problem
    if refreshed:  # intact but touched (chmod, utime): remember the new stat, skip the hash next time
        for rel, signature in refreshed.items():
            outputs.files[rel]["stat"] = signature
        try:
            _write_json_atomic(cache_dir / SETUP_DONE, {**marker, "outputs": outputs.to_json()})
        except OSError:
            pass  # a read-only cache: the next run hashes again
    return True, ""


def setup_outputs_of(cache_dir: Path) -> setup_outputs.Outputs | None:
    """The outputs the setup marker in ``cache_dir`` records (None: no setup ran)."""
    marker = setup_outputs.read_marker(cache_dir / SETUP_DONE)
    return setup_outputs.Outputs.from_json(marker.get("outputs")) if marker else None


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
        env = _setup_env(_base_env(request, spec.budget_seconds, cache_dir), cache_dir)
        ok, seconds, reason = ensure_setup(spec, source, cache_dir, env)
    if not ok:
        raise HarnessError(reason)
    return cache_dir, seconds, seconds == 0.0


# --------------------------------------------------------------------------- the run


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def eval_allowance(spec: TargetSpec, budget: float) -> float:
    """Seconds a run may take beyond its training budget (start-up, evaluation)."""
    if spec.eval_allowance_seconds is not None:
        return spec.eval_allowance_seconds
    return max(DEFAULT_ALLOWANCE_SECONDS, DEFAULT_ALLOWANCE_SHARE * budget)


def _box(request: RunRequest, spec: TargetSpec, cache_dir: Path, log_path: Path) -> sandbox.Box:
    """What the run may touch: its run dir (not its log), nothing else writable, the ledger hidden."""
    if not sandbox.support().boxed and sandbox.required():
        raise HarnessError(f"{sandbox.BOX_ENV}=require: {sandbox.support().warning}")
    state = request.target_dir.resolve() / STATE_DIR
    cache = cache_dir.resolve()
    shared = tuple(Path(os.path.expanduser(p)).resolve() for p in spec.writable)
    guarded = {"the target": request.target_dir.resolve(), "labfleet's virtualenv": Path(sys.prefix).resolve()}
    for path in shared:
        for what, where in guarded.items():
            if where.is_relative_to(path) or path.is_relative_to(where):
                raise ConfigError(f"target.writable: {path} would let runs write {what} ({where})")
    return sandbox.Box(
        writable=(request.run_dir.resolve(),),
        shared=shared,
        hidden=(state, integrity.eval_data_dir(cache)),  # the evaluator's data: never the run's
        readonly=(cache,),  # read-only even inside a shared folder
        protected=(log_path.resolve(),),
        network=spec.network,
        gpu=request.device.startswith("cuda"),
        cpus=tuple(request.cpus) if request.cpus else None,
        memory_mb=request.memory_mb,
    )


class _Draft:
    """A ``RunResult``'s fields while the run goes (the harness fills them in step by step).

    ``freeze()`` gives the frozen record; nothing outside this module sees a draft.
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(asdict(RunResult(**fields)))

    def __getattr__(self, name: str) -> Any:  # for type checkers: the fields are set in __init__
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dict__:
            raise AttributeError(f"RunResult has no field {name!r}")
        self.__dict__[name] = value

    def freeze(self) -> RunResult:
        return RunResult(**self.__dict__)


def run_experiment(request: RunRequest) -> RunResult:
    """Run one experiment (steps 1-5 above); always returns a result and writes result.json."""
    run_dir = request.run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise HarnessError(f"run directory {run_dir} is not empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / LOG_FILE
    log_path.touch()
    result = _Draft(
        outcome=Outcome.REJECTED,
        seed=request.seed,
        device=request.device,
        threads=request.threads,
        started_at=time.time(),
        log_path=str(log_path),
    )
    support = sandbox.support()
    if not support.boxed:
        result.flags.append(support.warning)
    try:
        _run(request, result, run_dir, log_path)
    except (PatchError, ConfigError) as exc:
        result.outcome, result.reason = Outcome.REJECTED, str(exc)
    result.ended_at = time.time()
    result.log_tail = integrity.redact(_log_tail(log_path), _holdout_names(request))
    final = result.freeze()
    _write_json_atomic(run_dir / RESULT_FILE, final.to_json())
    return final


def _holdout_names(request: RunRequest) -> list[str]:
    """The holdout metric's name, to keep it out of log tails (researchers read those)."""
    try:
        config = parse_config(workspace.show_file(request.target_dir, request.commit, CONFIG_FILE))
    except LabfleetError:
        return []
    return [config.holdout.metric] if config.holdout else []


def _run(request: RunRequest, result: _Draft, run_dir: Path, log_path: Path) -> _Draft:
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
    notes: list[str] = []
    ok, seconds, reason = ensure_setup(spec, source, cache_dir, _setup_env(env, cache_dir), notes=notes)
    if notes:  # the cache was not intact: said in the run's log and its flags
        result.flags += notes
        with log_path.open("a") as log:
            log.writelines(f"labfleet: {note}\n" for note in notes)
    result.setup_seconds, result.setup_cached = seconds, seconds == 0.0
    if not ok:
        result.outcome, result.reason = Outcome.SETUP_FAILED, reason
        return result
    outputs = setup_outputs_of(cache_dir)
    if outputs is not None:  # what setup wrote into the target folder, at the same paths
        setup_outputs.place(source, cache_dir, outputs)
    _flag_data_paths(request.patch, cache_dir, result)

    # 4. run in the box (beside the frozen evaluator, if the target has one), under budget +
    # evaluation allowance and the hard timeout; `{knob}` placeholders take the version's values
    command = run_command_for(config, _TextFiles(source))
    metrics_path = source / spec.metrics_file if spec.metrics_file else None
    if metrics_path is not None and (metrics_path.is_symlink() or metrics_path.is_file()):
        metrics_path.unlink()  # the run must write it
    private = {**_setup_env(env, cache_dir), **({integrity.HOLDOUT_ENV: "1"} if request.holdout else {})}
    evaluator = integrity.Evaluator(config.evaluate.command, source, private) if config.evaluate else None
    key, key_fd = integrity.signing_channel() if spec.signed else (None, None)
    fds = tuple(fd for fd in (key_fd, evaluator and evaluator.run_fd) if fd is not None)
    if key_fd is not None:
        env[integrity.SIGNING_FD_ENV] = str(key_fd)
    if evaluator is not None:
        env[integrity.EVAL_FD_ENV] = str(evaluator.run_fd)
    box = _box(request, spec, cache_dir, log_path)
    log_inode = _inode(log_path)
    if sandbox.support().boxed:  # /tmp is read-only in the box: temporary files go to the run dir
        (run_dir / "tmp").mkdir(exist_ok=True)
        env["TMPDIR"] = str(run_dir / "tmp")
    allowed = budget + eval_allowance(spec, budget)  # the harness's clock, not the run's
    # CPU slots: CPU seconds per thread (a loaded machine stretches wall time, not compute); GPU: wall
    cpu_threads = request.threads if not request.device.startswith(("cuda", "mps")) else None
    try:
        if evaluator is not None:
            evaluator.start()
        finish = run_measured(command, source, env, log_path, timeout, box=box, budget_limit=allowed,
                              cpu_threads=cpu_threads, pass_fds=fds)
    finally:
        if key_fd is not None:
            os.close(key_fd)
        eval_code, eval_output = evaluator.finish() if evaluator is not None else (None, "")
    code, seconds = finish.code, finish.seconds
    result.exit_code, result.run_seconds, result.cpu_seconds = code, seconds, finish.cpu_seconds

    # 2'. frozen files, after: a run that changed them is not trusted
    after = workspace.file_hashes(source, spec.frozen)
    changed = [p for p in spec.frozen if after.get(p) != hashes.get(p)]
    if finish.stopped == "budget":
        used = (f"{finish.cpu_seconds / cpu_threads:.1f} CPU-s per thread" if cpu_threads and finish.cpu_seconds
                else f"{seconds:.1f} s")
        result.outcome = Outcome.OVER_BUDGET
        result.reason = (f"stopped at {used}, past its budget {budget:g} s + {allowed - budget:g} s "
                         "evaluation allowance (measured by the harness)")
        return result
    if code is None:
        result.outcome, result.reason = Outcome.TIMEOUT, f"killed after {timeout:g} s (hard timeout)"
        return result
    if changed:
        result.reason = f"frozen file {changed[0]} was modified during the run"
        return result
    problem = setup_outputs.check(source, cache_dir, outputs) if outputs is not None else ""
    if problem:
        result.reason = problem
        return result

    # 5. parse (bounded: the capped log, never more than its head and tail)
    if _inode(log_path) != log_inode:  # only without the box: in it run.log is read-only
        result.outcome, result.reason = Outcome.SUSPECT, f"{LOG_FILE} was replaced during the run"
        return result
    output = logs.read_bounded(log_path)
    if evaluator is not None:  # the run's own metric line is never taken, whatever it says
        output = re.sub(rf"^\s*{re.escape(spec.metric)}\s*:.*$", "", output, flags=re.MULTILINE)
    metrics_text = metrics.read_metrics_file(metrics_path) if metrics_path is not None else None
    outcome, reason, metric, figures = classify(output, code, spec, key, metrics_text)
    if evaluator is not None:
        outcome, reason, metric, figures = _from_evaluator(
            (outcome, reason, metric, figures), eval_code, eval_output, config)
    result.outcome, result.reason, result.metric, result.figures = outcome, reason, metric, figures
    if request.holdout and config.holdout is not None and outcome == Outcome.OK:
        result.holdout = _holdout(config, source, private, eval_output, timeout, box)
    return result


class _TextFiles(dict[str, str]):
    """A version's files by relative path, read on first use."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, rel: str) -> str:
        try:
            text = (self.root / rel).read_text()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"{rel}: cannot read it to fill the run command's knobs") from None
        self[rel] = text
        return text
def _flag_data_paths(patch: str, cache_dir: Path, result: _Draft) -> None:
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
    value = metrics.number(block[name])
    if not isinstance(value, float):
        return Outcome.NO_METRIC, f"{name} is not a number: {block[name]!r}", None, figures
    extra = {k: metrics.number(v) for k, v in block.items() if k not in hidden and k != "suspect"}
    figures = {**figures, **extra}
    if not math.isfinite(value):
        return Outcome.NAN, f"{name} is {block[name]}", value, figures
    return Outcome.OK, "", value, figures


def _holdout(
    config: TargetConfig, source: Path, env: dict[str, str], eval_output: str, timeout: float, box: sandbox.Box,
) -> float | None:
    """The holdout metric: from the evaluator's block, or from the holdout command's own block."""
    assert config.holdout is not None
    name = config.holdout.metric
    output = eval_output
    if config.holdout.command:
        with tempfile.TemporaryDirectory(prefix="labfleet-holdout-") as tmp:
            log = Path(tmp) / "holdout.log"  # never in the run directory: researchers read that
            code, _ = run_command(config.holdout.command, source, env, log, timeout, box=box)
            output = log.read_text(errors="replace") if code == 0 else ""
    value = metrics.number(parse_block(output).get(name, ""))
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
