"""labfleet's exceptions.

    LabfleetError            anything a user can fix; the CLI prints it as one line
     ├── ConfigError         labfleet.toml is missing, malformed or inconsistent
     ├── GitError            a git command failed (not a git repo, unknown commit, ...)
     │    └── PatchError     a patch does not apply or touches a file it may not
     └── HarnessError        a run could not even be attempted (bad run directory, ...)

Outcomes of experiments (crashed, timeout, nan, ...) are not exceptions: they are
recorded results. Exceptions are for the caller's mistakes.
"""

from __future__ import annotations


class LabfleetError(Exception):
    """Base class: the message is one line a user can act on."""


class ConfigError(LabfleetError):
    pass


class GitError(LabfleetError):
    pass


class PatchError(GitError):
    pass


class HarnessError(LabfleetError):
    pass
