"""labfleet: autonomous ML research in parallel over a fleet of accelerators.

The layers (see DESIGN.md): ``target`` (labfleet.toml, knobs), ``workspace`` (git),
``harness`` (runs one experiment where it lands), ``cli``.
Heavy dependencies (torch, ray, skypilot, LLM SDKs) are never imported here.
"""

from labfleet.errors import ConfigError, GitError, HarnessError, LabfleetError, PatchError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GitError",
    "HarnessError",
    "LabfleetError",
    "PatchError",
    "__version__",
]
