"""Plans from measurements: a surrogate fitted to real runs.

``labfleet simulate`` normally runs against a hand-made bowl (``Surrogate``). This
module fits one to runs that really happened instead, so a small pilot on a user's
own target answers "what would 16 H100s do?":

- the metric as a function of the knobs: a Gaussian process (scikit-learn's
  ``GaussianProcessRegressor``, an anisotropic RBF kernel plus a white-noise term)
  on the knob values placed on [0, 1] (``knob_unit``), fitted to knob-only
  experiments; an experiment that changes code beyond the knobs gets a per-patch
  offset (its mean residual) instead, reported but not simulated;
- the metric gained per e-fold of steps, from the same config run at several step
  counts or budgets, and a per-class offset where several hardware classes ran;
- noise per hardware class, pooled from repeats (same config, class and budget);
- the step-rate ratio between classes (tokens per second on configs both ran);
- crash and timeout rates, setup seconds and per-run overhead (a run's wall time
  beyond its training seconds).

Observations come from a ledger (``observations_from_ledger``) or from the measured
table shipped with labfleet (``measured_table``: real tinygpt runs on CPU, made by
``bench/measure_table.py``). ``fit`` holds back a share of the configs, reports
predicted vs measured on them (``Fit.holdout``), then refits on everything.

The fitted model never extrapolates silently: a query outside the measured region
(beyond the range of values measured for a knob, or a choice never measured) is
answered at the nearest point of the region, and counted; ``FittedSurrogate.
warnings()`` names the knobs, and ``labfleet simulate`` prints them.

scikit-learn is an optional extra (``pip install 'labfleet[plan]'``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from labfleet.errors import ConfigError
from labfleet.executors.simulated import DEFAULT_SPEEDS, _rng, knob_unit
from labfleet.harness import Outcome
from labfleet.target import Knob, KnobValue

MEASURED_TABLE = "tinygpt_cpu.csv"
EXTRA = "plan"
# How far past the measured range of a knob (in units of its whole range) a query may
# go before it counts as outside the measured region.
SLACK = 0.05
STEP_SLACK = math.log(1.25)  # and past the measured range of training lengths (ln steps)
OK_STATUSES = {"ok", "done"}
CRASH_STATUSES = {"crashed", "nan"}
TIMEOUT_STATUSES = {"timeout"}


def require_sklearn() -> Any:
    """scikit-learn's gaussian_process module, or a one-line ConfigError naming the extra."""
    try:
        from sklearn import gaussian_process
    except ImportError:
        raise ConfigError(
            f"fitting a surrogate needs scikit-learn: pip install 'labfleet[{EXTRA}]'"
        ) from None
    return gaussian_process


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Observation:
    """One real run, as the fit reads it."""

    knobs: Mapping[str, KnobValue]
    outcome: str  # ok | crashed | nan | timeout | ... (the harness's outcome or the ledger's status)
    metric: float | None = None
    hardware: str = "cpu"
    seed: int = 0
    budget_seconds: float = 0.0
    steps: float | None = None  # training steps, when the run says
    training_seconds: float | None = None
    wall_seconds: float | None = None  # the run's wall time (start-up + training + evaluation)
    setup_seconds: float | None = None  # None: setup was cached or unknown
    tokens_per_second: float | None = None
    patch_key: str = ""  # "": a knob-only version; else an id of the code change

    @property
    def ok(self) -> bool:
        return self.outcome in OK_STATUSES and self.metric is not None and math.isfinite(self.metric)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _typed(knob: Knob, text: str) -> KnobValue:
    if knob.choices is not None:
        for choice in knob.choices:
            if str(choice) == text:
                return choice
    number = float(text)
    return round(number) if knob.integer or (knob.choices and all(isinstance(c, int) for c in knob.choices)) else number


def read_table(text: str, knobs: Mapping[str, Knob], metric: str) -> tuple[list[Observation], list[str]]:
    """Observations from a measured table (CSV after ``#`` header lines) and its header lines."""
    header = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    observations = []
    for row in csv.DictReader(io.StringIO(body)):
        missing = [name for name in knobs if name not in row]
        if missing:
            raise ConfigError(f"the measured table has no column for knob {missing[0]}")
        steps = _float(row.get("steps")) or _float(row.get("num_steps"))
        training = _float(row.get("training_seconds"))
        observations.append(Observation(
            knobs={name: _typed(knob, row[name]) for name, knob in knobs.items()},
            outcome=row["outcome"], metric=_float(row.get(metric)), hardware=row.get("hardware") or "cpu",
            seed=int(row.get("seed") or 0), budget_seconds=_float(row.get("budget_seconds")) or (training or 0.0),
            steps=steps, training_seconds=training, wall_seconds=_float(row.get("run_seconds")),
            tokens_per_second=_float(row.get("tokens_per_second")),
        ))
    return observations, header


def measured_table(knobs: Mapping[str, Knob], metric: str = "val_bpb") -> tuple[list[Observation], list[str]]:
    """The table shipped with labfleet (real tinygpt runs on CPU) and its header."""
    text = resources.files("labfleet").joinpath("data", MEASURED_TABLE).read_text()
    return read_table(text, knobs, metric)


_KNOB_LINE = re.compile(r"^[+-]\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=]*)?=")


def knob_only(patch: str, knobs: Iterable[str]) -> bool:
    """Whether every changed line of ``patch`` assigns one of ``knobs`` (an empty patch is)."""
    names = set(knobs)
    for line in patch.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        if not line[1:].strip():
            continue
        match = _KNOB_LINE.match(line)
        if match is None or match.group(1) not in names:
            return False
    return True


def observations_from_ledger(ledger: Any, knobs: Mapping[str, Knob], session_id: int | None = None) -> list[Observation]:
    """Every final run in the ledger (or one session) as an observation."""
    pairs = ledger.final_runs(session_id)
    # An experiment's code: knob-only when its patch (and its ancestors') only set knobs.
    patches = {e.id: (e.parent_id, e.patch) for e in ledger.experiments(None)}
    code_of: dict[int, str] = {}

    def code(experiment_id: int | None) -> str:
        if experiment_id is None:
            return ""
        if experiment_id not in code_of:
            parent, patch = patches.get(experiment_id, (None, ""))
            code_of[experiment_id] = code(parent) if knob_only(patch, knobs) else f"experiment {experiment_id}"
        return code_of[experiment_id]

    out = []
    for run, exp in pairs:
        figures = run.figures
        values = exp.knobs
        training = _float(figures.get("training_seconds")) or _float(figures.get("elapsed_seconds"))
        budget = run.budget_seconds or exp.budget_seconds or 0.0
        wall = (run.ended_at - run.started_at) if run.ended_at and run.started_at else None
        setup = _float(figures.get("setup_seconds"))
        out.append(Observation(
            knobs={name: values.get(name) for name in knobs}, outcome=str(run.status), metric=run.metric,
            hardware=run.hardware or "cpu", seed=run.seed if run.seed is not None else exp.seed,
            budget_seconds=float(budget), steps=_float(figures.get("num_steps")) or _float(figures.get("steps")),
            training_seconds=training, wall_seconds=wall, setup_seconds=setup,
            tokens_per_second=_float(figures.get("tokens_per_second")), patch_key=code(exp.id),
        ))
    return out


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class Holdout:
    """Predicted vs measured on runs the fit did not see."""

    runs: int
    configs: int
    mae: float
    rmse: float
    noise_sd: float  # the floor: no model of the knobs predicts one run better than its noise
    r2: float
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (predicted, measured)

    def line(self, metric: str = "metric") -> str:
        if not self.runs:
            return "held-out check: too few distinct configs to hold any back"
        return (f"held-out check: {self.runs} runs of {self.configs} configs the fit did not see: mean abs error"
                f" {self.mae:.4f}, RMSE {self.rmse:.4f} {metric} (noise sd {self.noise_sd:.4f}), R^2 {self.r2:.2f}")


@dataclass
class FittedSurrogate:
    """A surrogate fitted to real runs; plugs into ``SimulatedExecutor`` like ``Surrogate``.

    ``expected(knobs, speed, budget)`` is the GP's mean at the knobs (clamped into the
    measured region) plus the step term; ``evaluate`` adds the class's noise, crashes
    and hangs, and the measured overhead.
    """

    knobs: Mapping[str, Knob]
    gp: Any
    region: Mapping[str, tuple[float, float]]  # per knob, measured [low, high] on [0, 1]
    choices_seen: Mapping[str, frozenset[int]]  # per choice knob, the choice indices measured
    noise_by_class: Mapping[str, float]
    noise_sd: float
    speed_gain: float  # metric gained per e-fold of steps
    class_offsets: Mapping[str, float]
    speeds: Mapping[str, float]  # relative step rate per class, measured where possible
    crash_rate: float
    hang_rate: float
    setup_seconds: float
    overhead_seconds: float
    direction: str
    metric_name: str
    source: str  # one line: where the model came from (the report's headline says it)
    reference_budget_seconds: float | None = None
    reference_hardware: str = "cpu"
    patch_offsets: Mapping[str, float] = field(default_factory=dict)
    holdout: Holdout | None = None
    observations: int = 0
    timing: str = "measured"
    step_range: tuple[float, float] = (0.0, 0.0)  # measured ln(steps / reference steps)
    outside: dict[str, int] = field(default_factory=dict)  # knob -> queries outside the region
    queries: int = 0

    # ----------------------------------------------------------------- the model

    def features(self, knobs: Mapping[str, KnobValue], count: bool = False) -> np.ndarray:
        row = []
        for name, knob in self.knobs.items():
            unit = knob_unit(knob, knobs.get(name))
            low, high = self.region[name]
            if unit is None:
                unit = (low + high) / 2
            outside = unit < low - SLACK or unit > high + SLACK
            if knob.choices is not None and len(knob.choices) > 1:
                index = round(unit * (len(knob.choices) - 1))
                outside = outside or index not in self.choices_seen.get(name, frozenset())
            if outside and count:
                self.outside[name] = self.outside.get(name, 0) + 1
            row.append(min(high, max(low, unit)))
        return np.array(row, dtype=float)

    def _step_factor(self, hardware_speed: float | None, budget_seconds: float | None) -> float:
        """Steps relative to the reference: (class speed / reference class speed) x (budget / reference)."""
        reference = self.speeds.get(self.reference_hardware, 1.0)
        factor = (reference if hardware_speed is None else hardware_speed) / reference
        if self.reference_budget_seconds and budget_seconds:
            factor *= budget_seconds / self.reference_budget_seconds
        return factor

    def expected(self, knobs: Mapping[str, KnobValue], hardware_speed: float | None = None,
                 budget_seconds: float | None = None, hardware: str | None = None) -> float:
        """The noise-free metric; ``hardware_speed`` None: the reference class's speed."""
        mean = float(self.gp.predict(self.features(knobs)[None, :])[0])
        sign = 1.0 if self.direction == "minimize" else -1.0
        factor = math.log(max(self._step_factor(hardware_speed, budget_seconds), 1e-9))
        factor = min(self.step_range[1] + STEP_SLACK, max(self.step_range[0] - STEP_SLACK, factor))
        mean -= sign * self.speed_gain * factor
        return mean + self.class_offsets.get(hardware or "", 0.0)

    def best_knobs(self) -> dict[str, KnobValue]:
        raise NotImplementedError("a fitted surrogate has no known optimum")

    def evaluate(
        self, knobs: Mapping[str, KnobValue], hardware_speed: float, seed: int, run_id: int, budget_seconds: float,
        hardware: str | None = None,
    ) -> tuple[Outcome, float | None, dict[str, float | str], float, str]:
        """One run, the ``Surrogate.evaluate`` contract: (outcome, metric, figures, duration, log)."""
        self.queries += 1
        self.features(knobs, count=True)
        log_factor = math.log(max(self._step_factor(hardware_speed, budget_seconds), 1e-9))
        if not self.step_range[0] - STEP_SLACK <= log_factor <= self.step_range[1] + STEP_SLACK:
            key = "steps: hardware speed x budget"
            self.outside[key] = self.outside.get(key, 0) + 1
        rng = _rng("fitted", self.source, "run", seed, run_id)
        noise, fate, fraction = float(rng.normal()), float(rng.random()), float(rng.random())
        header = (f"simulated run {run_id} (fitted surrogate): seed {seed}, speed {hardware_speed:g}x,"
                  f" budget {budget_seconds:g} s")
        if fate < self.crash_rate:
            at = fraction * (self.overhead_seconds + budget_seconds)
            return Outcome.CRASHED, None, {}, at, f"{header}\nTraceback (most recent call last):\n(simulated crash)"
        if fate < self.crash_rate + self.hang_rate:
            return Outcome.TIMEOUT, None, {}, math.inf, f"{header}\n(simulated hang: no progress)"
        sd = self.noise_by_class.get(hardware or "", self.noise_sd)
        metric = self.expected(knobs, hardware_speed, budget_seconds, hardware) + sd * noise
        figures: dict[str, float | str] = {"elapsed_seconds": float(budget_seconds)}
        block = f"{self.metric_name + ':':<18}{metric:.6f}\nelapsed_seconds:  {budget_seconds:g}"
        return Outcome.OK, metric, figures, self.overhead_seconds + budget_seconds, f"{header}\n---\n{block}"

    # ----------------------------------------------------------------- what it says about itself

    def warnings(self) -> list[str]:
        """Lines on queries outside the measured region (empty: every query was inside)."""
        if not self.outside:
            return []
        worst = sorted(self.outside.items(), key=lambda kv: -kv[1])
        named = ", ".join(f"{name} ({count})" for name, count in worst)
        return [f"outside the measured region: {sum(self.outside.values())} knob values in {self.queries} simulated"
                f" runs lay beyond what was measured ({named}); they were answered at the region's edge, not"
                " extrapolated, so treat those parts of the plan as unmeasured"]

    def describe(self) -> list[str]:
        lines = [f"surrogate: {self.source}"]
        lines.append(f"  fitted on {self.observations} runs: noise sd "
                     + ", ".join(f"{c} {sd:.4f}" for c, sd in sorted(self.noise_by_class.items()))
                     + f"; {self.speed_gain:.4f} {self.metric_name} per e-fold of steps;"
                     f" crash {self.crash_rate:.1%}, timeout {self.hang_rate:.1%}")
        lines.append(f"  timing ({self.timing}): setup {self.setup_seconds:.0f} s per worker, overhead"
                     f" {self.overhead_seconds:.1f} s per run; step rate "
                     + ", ".join(f"{c} {s:g}" for c, s in sorted(self.speeds.items()) if c in self.noise_by_class
                                 or c == self.reference_hardware))
        if self.patch_offsets:
            lines.append("  code changes beyond the knobs (offset vs the knob model, not simulated): "
                         + ", ".join(f"{k} {v:+.4f}" for k, v in self.patch_offsets.items()))
        if self.holdout is not None:
            lines.append("  " + self.holdout.line(self.metric_name))
        return lines


def _config_key(obs: Observation) -> str:
    return json.dumps({k: obs.knobs.get(k) for k in sorted(obs.knobs)}, sort_keys=True, default=str)


def _pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float | None, int]:
    """Pooled within-group standard deviation and its degrees of freedom."""
    ss, dof = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            mean = statistics.fmean(values)
            ss += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return (math.sqrt(ss / dof), dof) if dof else (None, 0)


def _steps(obs: Observation, speeds: Mapping[str, float]) -> float:
    """A run's training length in steps, or (failing that) budget x class speed."""
    if obs.steps:
        return obs.steps
    return max(obs.budget_seconds, 1e-9) * speeds.get(obs.hardware, 1.0)


def _fit_gp(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    gaussian_process = require_sklearn()
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.full(x.shape[1], 0.5), (1e-2, 1e2)) + WhiteKernel(
        0.05, (1e-6, 1.0))
    from sklearn.exceptions import ConvergenceWarning

    gp = gaussian_process.GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=2,
                                                   random_state=seed)
    with warnings.catch_warnings():  # a length scale at its bound means "this knob barely matters": fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    return gp


def fit(
    observations: Sequence[Observation], knobs: Mapping[str, Knob], *, direction: str = "minimize",
    metric_name: str = "metric", source: str = "a fitted surrogate", holdout: float = 0.2, seed: int = 0,
    speeds: Mapping[str, float] | None = None, timing: Mapping[str, float] | None = None,
) -> FittedSurrogate:
    """Fit a ``FittedSurrogate`` to ``observations``; ConfigError when they cannot carry one.

    ``holdout``: the share of distinct knob-only configs held back for ``Holdout``
    (all repeats of a config go together, so a repeat never leaks its twin's value).
    ``timing``: setup_seconds / overhead_seconds to use instead of the measured ones
    (the shipped CPU table's timing says nothing about a GPU fleet).
    """
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"direction must be minimize or maximize, not {direction!r}")
    if not knobs:
        raise ConfigError("the target has no [knobs]: a fitted surrogate models the metric as a function of knobs")
    final = [o for o in observations if o.outcome not in ("queued", "running", "lost", "cancelled")]
    ok = [o for o in final if o.ok]
    knob_runs = [o for o in ok if not o.patch_key]
    configs = {_config_key(o) for o in knob_runs}
    if len(knob_runs) < 5 or len(configs) < 3:
        raise ConfigError(f"too few measured runs to fit a surrogate: {len(knob_runs)} successful knob-only runs"
                          f" over {len(configs)} configs (need at least 5 runs over 3 configs)")
    names = list(knobs)

    # Step-rate ratio between classes: tokens/s on the configs each class ran, vs the reference.
    class_counts: dict[str, int] = defaultdict(int)
    for o in knob_runs:
        class_counts[o.hardware] += 1
    reference = max(class_counts, key=lambda c: class_counts[c])
    rate_speeds = dict(DEFAULT_SPEEDS, **(speeds or {}))
    by_config_class: dict[tuple[str, str], list[float]] = defaultdict(list)
    for o in knob_runs:
        if o.tokens_per_second:
            by_config_class[(_config_key(o), o.hardware)].append(o.tokens_per_second)
    for cls in class_counts:
        if cls == reference:
            continue
        ratios = [statistics.fmean(v) / statistics.fmean(by_config_class[(key, reference)])
                  for (key, c), v in by_config_class.items() if c == cls and (key, reference) in by_config_class]
        if ratios:
            rate_speeds[cls] = rate_speeds.get(reference, 1.0) * statistics.median(ratios)

    # Steps: the most common length is the reference; the GP sees runs at every length,
    # corrected by the step term, whose slope comes from configs measured at several lengths.
    lengths = [_steps(o, rate_speeds) for o in knob_runs if o.hardware == reference]
    ref_steps = statistics.median(lengths)
    log_lengths = [math.log(n / ref_steps) for n in lengths]
    for cls in class_counts:  # a class measured at another speed widens the range
        log_lengths.append(math.log(rate_speeds.get(cls, 1.0) / rate_speeds.get(reference, 1.0)))
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for o in knob_runs:
        if o.hardware == reference:
            groups[_config_key(o)].append((math.log(_steps(o, rate_speeds) / ref_steps), float(o.metric)))
    sxx = sxy = 0.0
    for pairs in groups.values():
        if len({round(p[0], 6) for p in pairs}) >= 2:
            mx, my = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
            sxx += sum((p[0] - mx) ** 2 for p in pairs)
            sxy += sum((p[0] - mx) * (p[1] - my) for p in pairs)
    sign = 1.0 if direction == "minimize" else -1.0
    slope = sxy / sxx if sxx > 0 else 0.0  # metric per e-fold of steps (negative when more steps help)
    speed_gain = max(0.0, -sign * slope)

    def corrected(o: Observation) -> float:
        return float(o.metric) - slope * math.log(_steps(o, rate_speeds) / ref_steps) if o.hardware == reference \
            else float(o.metric)

    # Region: what was measured, per knob.
    units = {name: [knob_unit(knobs[name], o.knobs.get(name)) for o in knob_runs] for name in names}
    region = {}
    choices_seen = {}
    for name, knob in knobs.items():
        placed = [u for u in units[name] if u is not None]
        region[name] = (min(placed), max(placed)) if placed else (0.0, 1.0)
        if knob.choices is not None and len(knob.choices) > 1:
            choices_seen[name] = frozenset(round(u * (len(knob.choices) - 1)) for u in placed)

    def design(rows: Sequence[Observation]) -> np.ndarray:
        out = np.zeros((len(rows), len(names)))
        for i, o in enumerate(rows):
            for j, name in enumerate(names):
                u = knob_unit(knobs[name], o.knobs.get(name))
                out[i, j] = (sum(region[name]) / 2) if u is None else u
        return out

    ref_runs = [o for o in knob_runs if o.hardware == reference]
    x_all, y_all = design(ref_runs), np.array([corrected(o) for o in ref_runs])

    # Noise per class: pooled over repeats of the same config, class and length.
    repeat_groups: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for o in ok:
        repeat_groups[(_config_key(o) + o.patch_key, o.hardware, round(_steps(o, rate_speeds), 3))].append(float(o.metric))
    noise_by_class: dict[str, float] = {}
    for cls in class_counts:
        sd, _ = _pooled_sd(v for (_, c, _), v in repeat_groups.items() if c == cls)
        if sd is not None:
            noise_by_class[cls] = sd

    # The held-out check: fit on most configs, predict the rest.
    held = None
    ref_keys = sorted({_config_key(o) for o in ref_runs})
    n_hold = int(round(holdout * len(ref_keys)))
    if holdout > 0 and n_hold >= 1 and len(ref_keys) - n_hold >= 3:
        rng = np.random.default_rng(seed)
        held_keys = set(rng.choice(ref_keys, size=n_hold, replace=False).tolist())
        train = [i for i, o in enumerate(ref_runs) if _config_key(o) not in held_keys]
        test = [i for i, o in enumerate(ref_runs) if _config_key(o) in held_keys]
        gp = _fit_gp(x_all[train], y_all[train], seed)
        predicted = gp.predict(x_all[test])
        measured = y_all[test]
        errors = predicted - measured
        total = float(np.sum((measured - measured.mean()) ** 2))
        held = Holdout(
            runs=len(test), configs=n_hold, mae=float(np.mean(np.abs(errors))),
            rmse=float(np.sqrt(np.mean(errors**2))), noise_sd=noise_by_class.get(reference, math.nan),
            r2=1.0 - float(np.sum(errors**2)) / total if total > 0 else math.nan,
            pairs=[(float(p), float(m)) for p, m in zip(predicted, measured, strict=True)],
        )
    gp = _fit_gp(x_all, y_all, seed)
    white = float(gp.kernel_.k2.noise_level) if hasattr(gp.kernel_, "k2") else 0.0
    fallback_sd = noise_by_class.get(reference, math.sqrt(white) * float(np.std(y_all)) if white else 0.0)

    # Per-class offsets (a class that ran the same configs measures them higher or lower).
    class_offsets: dict[str, float] = {}
    for cls in class_counts:
        if cls == reference:
            continue
        rows = [o for o in knob_runs if o.hardware == cls]
        predicted = gp.predict(design(rows))
        speed = rate_speeds.get(cls, 1.0) / rate_speeds.get(reference, 1.0)
        step_term = -sign * speed_gain * math.log(speed)
        class_offsets[cls] = float(np.mean([o.metric for o in rows] - predicted)) - step_term
    # Per-patch offsets for code changes.
    patch_offsets: dict[str, float] = {}
    by_patch: dict[str, list[Observation]] = defaultdict(list)
    for o in ok:
        if o.patch_key:
            by_patch[o.patch_key].append(o)
    for key, rows in by_patch.items():
        predicted = gp.predict(design(rows))
        patch_offsets[key] = float(np.mean([o.metric for o in rows] - predicted))

    # Failures, setup and overhead.
    crash = sum(o.outcome in CRASH_STATUSES for o in final)
    hang = sum(o.outcome in TIMEOUT_STATUSES for o in final)
    overheads = [o.wall_seconds - (o.training_seconds or o.budget_seconds) for o in ok
                 if o.wall_seconds is not None and (o.training_seconds or o.budget_seconds)]
    setups = [o.setup_seconds for o in final if o.setup_seconds]
    timing = dict(timing or {})
    budgets = [o.budget_seconds for o in ref_runs if o.budget_seconds]
    return FittedSurrogate(
        knobs=dict(knobs), gp=gp, region=region, choices_seen=choices_seen, noise_by_class=noise_by_class,
        noise_sd=fallback_sd, speed_gain=speed_gain, class_offsets=class_offsets, speeds=rate_speeds,
        crash_rate=crash / len(final), hang_rate=hang / len(final),
        setup_seconds=timing.get("setup_seconds", statistics.median(setups) if setups else 0.0),
        overhead_seconds=timing.get("overhead_seconds", max(0.0, statistics.median(overheads)) if overheads else 0.0),
        direction=direction, metric_name=metric_name, source=source,
        reference_budget_seconds=statistics.median(budgets) if budgets else None, reference_hardware=reference,
        step_range=(min(log_lengths), max(log_lengths)),
        patch_offsets=patch_offsets, holdout=held, observations=len(final),
        timing="given" if timing else "measured",
    )


# --------------------------------------------------------------------------- entry points


def from_ledger(path: Path, target: Any, *, seed: int = 0) -> FittedSurrogate:
    """Fit to every run in the ledger at ``path`` (a ledger file or a target folder)."""
    from labfleet.ledger import LEDGER_FILE, Ledger
    from labfleet.target import load_target

    path = Path(path)
    db = path
    if path.is_dir():
        db = load_target(path, check_files=False).state_dir / LEDGER_FILE
    if not db.is_file():
        raise ConfigError(f"no ledger at {db}: give a ledger file or a target folder that has run a session")
    ledger = Ledger(db)
    try:
        observations = observations_from_ledger(ledger, target.knobs)
    finally:
        ledger.close()
    return fit(observations, target.knobs, direction=target.spec.direction, metric_name=target.spec.metric,
               source=f"fitted to {len(observations)} runs in {db}", seed=seed)


def measured(target: Any, *, seed: int = 0, timing: Mapping[str, float] | None = None,
             budget_seconds: float | None = None) -> FittedSurrogate:
    """Fit to the shipped table of real tinygpt runs on CPU (the ``measured`` surrogate).

    The table's runs are fixed-step runs; ``budget_seconds`` is the simulated budget
    its main step count stands for (a longer budget or a faster class: more steps).
    """
    missing = [name for name in target.knobs if name not in _table_columns()]
    if missing:
        raise ConfigError(f"the measured table covers the bundled tinygpt's knobs; this target's knob {missing[0]}"
                          " is not in it: use --from-ledger with runs of this target")
    observations, header = measured_table(target.knobs, target.spec.metric)
    head = header[0].split(":")[0] if header else "tinygpt on CPU"
    model = fit(observations, target.knobs, direction=target.spec.direction, metric_name=target.spec.metric,
                source=f"measured: {len(observations)} real runs of {head} ({MEASURED_TABLE})", seed=seed,
                timing=timing)
    # The table's main step count stands for the simulated budget on the reference class.
    model.reference_budget_seconds = budget_seconds
    model.reference_hardware = "H100"
    model.speeds = dict(DEFAULT_SPEEDS)
    return model


def _table_columns() -> list[str]:
    text = resources.files("labfleet").joinpath("data", MEASURED_TABLE).read_text()
    first = next(line for line in text.splitlines() if line and not line.startswith("#"))
    return first.split(",")
