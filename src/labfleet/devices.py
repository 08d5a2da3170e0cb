"""Accelerator names a run can get: ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` (Apple silicon).

The harness passes the worker's device to the run as ``LABFLEET_DEVICE``; the target
moves its model there (tinygpt's train.py does, and stops with a clear message when
the device is not there rather than quietly training on the CPU). ``local_devices``
gives a local fleet one device per worker: one CUDA device each, or the single MPS
device of an Apple-silicon machine, which takes one worker.
"""

from __future__ import annotations

import re

from labfleet.errors import LabfleetError

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
KINDS = ("cpu", "cuda", "mps")


def is_device(device: str) -> bool:
    return _DEVICE.match(device) is not None


def check_device(device: str, option: str = "--device") -> str:
    """``device`` if it names a device a run can get, else a one-line error."""
    if not is_device(device):
        raise LabfleetError(f"{option} {device!r}: use cpu, cuda, cuda:N or mps")
    return device


def detect() -> str:
    """The best device on this machine: cuda, then mps, then cpu (cpu when torch is absent)."""
    try:
        import torch  # only to look for an accelerator
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def local_devices(kind: str, workers: int) -> list[str] | None:
    """The device of each local worker for ``--device kind`` (None: CPU slots)."""
    if kind == "cpu":
        return None
    if kind == "cuda":
        return [f"cuda:{i}" for i in range(workers)]
    if kind == "mps":
        if workers != 1:
            raise LabfleetError(f"--device mps: an Apple-silicon machine has one MPS device, so one worker "
                                f"(got --workers {workers})")
        return ["mps"]
    raise LabfleetError(f"--device {kind!r}: use cpu, cuda or mps")
