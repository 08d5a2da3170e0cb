"""Every enum of labfleet, in one place: the words the ledger stores and the stages exchange.

They are ``StrEnum``: a member *is* its string (``Role.VALIDATE == "validate"``), so
values already stored in a ledger, JSON written by a harness and comparisons with
plain strings keep working; new code names the member instead of spelling the word.

    RunStatus       a run's life in the ledger (queued -> running -> one final status)
    Outcome         what the harness says about one run it attempted (``ok`` or why not)
    Decision        an experiment's fate (pending, kept, discarded, failed, baseline)
    Role            why a run exists (screen, confirm, validate, noise, calibrate)
    VerdictOutcome  a comparison with the champion beyond the noise (better, unsure, worse)
    SessionStatus   a session in the ledger (running, stopped, finished)
    Direction       which way the metric improves (minimize, maximize)
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    """A run's life: queued -> running -> one final status. Final statuses never change."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # the harness returned outcome ok: the metric counts
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    NO_METRIC = "no_metric"
    NAN = "nan"
    REJECTED = "rejected"
    SUSPECT = "suspect"
    SETUP_FAILED = "setup_failed"
    OVER_BUDGET = "over_budget"  # past budget + evaluation allowance: never compared
    LOST = "lost"  # the infrastructure lost it (worker gone, harness died): retried
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)

    @classmethod
    def from_outcome(cls, outcome: str) -> RunStatus:
        """The harness's outcome as a run status (``ok`` is ``done``)."""
        return cls.DONE if outcome == "ok" else cls(outcome)


class Outcome(enum.StrEnum):
    """The harness's classification of one run (every value but ``ok`` is also a RunStatus)."""

    OK = "ok"
    CRASHED = "crashed"  # non-zero exit
    TIMEOUT = "timeout"  # killed at the hard timeout
    NO_METRIC = "no_metric"  # finished but printed no metric
    NAN = "nan"  # the metric or the loss was not finite (the run printed FAIL)
    REJECTED = "rejected"  # patch does not apply / touches non-editable files / frozen files changed
    SUSPECT = "suspect"  # a metric line that did not come from the frozen code path
    SETUP_FAILED = "setup_failed"  # the target's setup command failed: not the experiment's fault
    OVER_BUDGET = "over_budget"  # ran past budget + evaluation allowance (the harness's clock): never compared


class Decision(enum.StrEnum):
    PENDING = "pending"  # not all of its runs are final yet
    KEPT = "kept"  # became the champion: the lineage branch advanced to it
    DISCARDED = "discarded"  # ran fine, not better by the margin
    FAILED = "failed"  # no counting run (crashed, timeout, rejected, ...)
    BASELINE = "baseline"  # the session's starting point


class Role(enum.StrEnum):
    """Why a run exists; the scheduler places queued runs in ``ROLE_PRIORITY`` order."""

    SCREEN = "screen"  # the first run of a new experiment
    CONFIRM = "confirm"  # a repeat of an unsure screen
    VALIDATE = "validate"  # a winner measured again on the validating tier before it is kept
    NOISE = "noise"  # a repeat of the baseline or champion that measures the noise floor
    CALIBRATE = "calibrate"  # the champion measured on another hardware class


class VerdictOutcome(enum.StrEnum):
    """A candidate against the champion, judged with the measured noise."""

    BETTER = "better"
    UNSURE = "unsure"  # within the noise: earns a confirmation repeat, not a keep
    WORSE = "worse"


class SessionStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # interrupted or stopped by hand: ``labfleet run`` resumes it
    FINISHED = "finished"  # a limit or the researcher ended it


class Direction(enum.StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"
