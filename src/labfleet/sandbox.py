"""The box a run executes in: nothing an experiment does can reach what measures it.

On Linux each run command is started by bubblewrap (``bwrap``, the tool Flatpak
and coding-agent sandboxes use), chosen over hand-written ``unshare`` calls
because it sets up every namespace and mount in one audited, setuid-free
program and is packaged everywhere (``apt-get install bubblewrap``). The box has

- its own PID namespace: when the run's first process exits, or the harness
  kills the box's init, the kernel kills every process in it (a double-forked
  ``setsid`` daemon included), and the harness writes ``result.json`` only after
  the box is empty;
- a read-only view of the whole filesystem (the target's work tree and
  ``.git``, the virtualenv, the setup cache), the target's ``.labfleet/``
  state folder (ledger, other runs) hidden behind an empty tmpfs, and only the
  run directory writable (its ``run.log`` read-only: the harness owns it);
- no network unless the target asks for it (``network = true`` in ``[target]``);
- no capabilities (as root too: without ``--cap-drop ALL`` root in the box could
  remount ``/`` read-write), a new session (no terminal injection), fresh
  ``/proc``, ``/dev`` (the host's ``/dev`` for GPU slots) and ``/dev/shm``.

Per-slot resources apply with or without the box: CPU affinity (``taskset``),
an address-space limit (``prlimit --as``), thread counts in the environment, and
``CUDA_VISIBLE_DEVICES`` for a ``cuda:N`` slot.

Where the box cannot be built (not Linux, no bwrap, no user namespaces, or
``LABFLEET_BOX=off``) runs fall back to a process group, and every result,
``labfleet status`` and ``labfleet doctor`` say so; ``LABFLEET_BOX=require``
turns that fallback into an error.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UNBOXED_PREFIX = "runs are NOT boxed"  # how every warning about an unboxed run begins
BOX_ENV = "LABFLEET_BOX"  # "off": never box; "require": fail where the box cannot be built
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"


@dataclass(frozen=True)
class Box:
    """What one run may touch. Paths that do not exist are skipped."""

    writable: tuple[Path, ...] = ()  # the run directory
    shared: tuple[Path, ...] = ()  # writable host folders the target asked for (tool caches), bound first
    hidden: tuple[Path, ...] = ()  # replaced by an empty tmpfs (the target's .labfleet/)
    readonly: tuple[Path, ...] = ()  # read-only again inside a hidden or shared folder (the setup cache)
    protected: tuple[Path, ...] = ()  # read-only files inside a writable folder (run.log)
    network: bool = False
    gpu: bool = False  # the host's /dev (GPU device nodes) instead of a minimal one
    cpus: tuple[int, ...] | None = None  # CPU affinity
    memory_mb: int | None = None  # address-space limit


@dataclass(frozen=True)
class Support:
    """Whether runs on this machine are boxed, and how (or why not)."""

    boxed: bool
    detail: str  # "bubblewrap (/usr/bin/bwrap)" or the reason it is not available

    @property
    def warning(self) -> str:
        return (f"{UNBOXED_PREFIX} ({self.detail}): only a process group contains them, so a daemon "
                "can outlive a run, and a run can write anywhere this user can and reach the network")


def _bwrap_flags(box: Box, info_fd: int | None = None) -> list[str]:
    flags = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try"]
    if os.geteuid() == 0:
        flags += ["--cap-drop", "ALL"]
    if not box.network:
        flags.append("--unshare-net")
    if info_fd is not None:
        flags += ["--info-fd", str(info_fd)]
    flags += ["--ro-bind", "/", "/", "--proc", "/proc"]
    flags += ["--dev-bind", "/dev", "/dev"] if box.gpu else ["--dev", "/dev"]
    flags += ["--tmpfs", "/dev/shm"] if box.gpu else []
    for path in box.shared:
        if path.is_dir():
            flags += ["--bind", str(path), str(path)]
    for path in box.hidden:
        if path.is_dir():
            flags += ["--tmpfs", str(path)]
    for path in box.readonly:
        if path.exists():
            flags += ["--ro-bind", str(path), str(path)]
    for path in box.writable:
        if path.exists():
            flags += ["--bind", str(path), str(path)]
    for path in box.protected:
        if path.exists():
            flags += ["--ro-bind", str(path), str(path)]
    return flags


def _mode() -> str:
    return os.environ.get(BOX_ENV, "").strip().lower()


@functools.cache
def support() -> Support:
    """Probe once per process: build a box around ``true`` with the flags a run gets."""
    if _mode() == "off":
        return Support(False, f"{BOX_ENV}=off")
    if not sys.platform.startswith("linux"):
        return Support(False, f"{sys.platform} has no bubblewrap; the box needs Linux")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Support(False, f"bwrap not found: {INSTALL_HINT}")
    try:
        proc = subprocess.run([bwrap, *_bwrap_flags(Box()), "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Support(False, f"bwrap failed to start: {exc}")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit {proc.returncode}"
        return Support(False, f"bwrap cannot build a box here ({why}): user namespaces may be disabled")
    return Support(True, f"bubblewrap ({bwrap})")  # one process: `status` probes too; doctor adds the version


@functools.cache
def version() -> str:
    """bwrap's own version line ("bubblewrap 0.8.0"), or "" without one."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return ""
    try:
        return subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def required() -> bool:
    return _mode() == "require"


def command(argv: list[str], box: Box, info_fd: int | None = None) -> list[str]:
    """``argv`` wrapped in the box (when supported) and the slot's CPU and memory limits."""
    prefix: list[str] = []
    if box.cpus and shutil.which("taskset"):
        prefix += ["taskset", "-c", ",".join(str(c) for c in box.cpus)]
    if box.memory_mb and shutil.which("prlimit"):
        prefix += ["prlimit", f"--as={box.memory_mb * 1024 * 1024}", "--"]
    if support().boxed:
        prefix += [shutil.which("bwrap") or "bwrap", *_bwrap_flags(box, info_fd), "--"]
    return prefix + argv


def slot_env(device: str, threads: int) -> dict[str, str]:
    """Environment that bounds a slot: thread counts, and one visible GPU for ``cuda:N``."""
    env = {name: str(threads) for name in THREAD_VARS}
    if device.startswith("cuda:") and device[5:].isdigit():
        env["CUDA_VISIBLE_DEVICES"] = device[5:]
    return env


def slot_device(device: str) -> str:
    """The device name a run sees: ``cuda:N`` becomes ``cuda:0`` (the one GPU it is shown)."""
    return "cuda:0" if device.startswith("cuda:") and device[5:].isdigit() else device


def slot_cpus(index: int, threads: int) -> tuple[int, ...] | None:
    """The CPUs of local slot ``index``: ``threads`` consecutive ones, wrapping around."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    if not available:
        return None
    count = min(threads, len(available))
    return tuple(available[(index * threads + k) % len(available)] for k in range(count))


def protections() -> list[tuple[str, bool, str]]:
    """(protection, active here, how or why not) for ``labfleet doctor`` and ``status``."""
    s = support()
    has = {tool: shutil.which(tool) is not None for tool in ("taskset", "prlimit")}
    why = s.detail
    rows = [
        ("box (bubblewrap)", s.boxed, (version() or s.detail) if s.boxed else s.detail),
        ("own PID namespace: no process outlives its run", s.boxed, "the box's init is killed with the run" if s.boxed else why),
        ("read-only target, .git, venv, setup cache; ledger hidden", s.boxed,
         "only the run directory is writable" if s.boxed else why),
        ("no network unless the target sets network = true", s.boxed, "--unshare-net" if s.boxed else why),
        ("CPU affinity per slot", has["taskset"], "taskset" if has["taskset"] else "taskset not found (util-linux)"),
        ("memory limit per slot (when set)", has["prlimit"], "prlimit --as (address space)" if has["prlimit"]
         else "prlimit not found (util-linux)"),
        ("threads per slot", True, "OMP/MKL/OpenBLAS thread variables"),
        ("one GPU per cuda:N slot", True, "CUDA_VISIBLE_DEVICES"),
        ("run logs capped, read in bounded memory", True, "head and tail kept, the cut stated"),
        ("orchestrator git ignores repository hooks and fsmonitor", True, "core.hooksPath, core.fsmonitor overridden"),
        ("training time enforced by the harness", True, "runs past budget + allowance are over_budget"),
    ]
    return rows
