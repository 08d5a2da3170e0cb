"""Two-level designs and the effects they measure: what a wave of experiments says.

A wave runs a factorial design: every factor (knob) at two levels, all combinations
(``2^k``) or a regular fraction of them (``2^(k-p)``) when there are fewer workers
than combinations. ``estimate_effects`` fits main effects and the two-factor
interactions the design can separate, with standard errors from the noise floor (or
from the residuals when the design has spare runs), so a researcher reads "raising
LEARNING_RATE lowers val_bpb by 0.031 ± 0.008 (95% CI)" instead of a table of runs.

Pure functions over numbers and frozen records: no ledger, no git.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from labfleet.records import Result

EXHAUSTIVE_LIMIT = 5000  # generator sets searched one by one; past this, chosen greedily
FULL_PATTERN_MAX_P = 10  # up to 2^10 defining words are listed to rank a design; past that, only short ones
INTERACTION = "×"
WAVE_TAG = "wave"
MIN_WAVE_RESULTS = 3  # fewer ok results than this in a wave: no effects reported
IDEA_LEVELS = ("off", "on")  # an idea factor's two levels, coded -1 and +1


# --------------------------------------------------------------------------- designs


def _word_lengths(words: Sequence[int], k: int) -> tuple[int, ...]:
    """The word-length pattern (counts of lengths 1..k) of the subgroup the words generate."""
    group = np.zeros(1, dtype=np.int64)
    for word in words:
        group = np.concatenate([group, group ^ word])
    lengths = np.zeros(len(group), dtype=np.int64)
    for bit in range(k):
        lengths += (group >> bit) & 1
    counts = np.bincount(lengths, minlength=k + 1)
    return tuple(int(c) for c in counts[1:])


def _short_words(columns: Sequence[int]) -> tuple[int, int]:
    """Words of length 3 and 4 of a regular design, from its columns as vectors over GF(2)^m.

    Three columns that XOR to zero are a length-3 word, four a length-4 word: counted
    from how many column pairs share each XOR value, in time quadratic in k (not 2^p).
    """
    cols = np.asarray(columns, dtype=np.int64)
    upper = np.triu_indices(len(cols), 1)
    pairs = np.bincount(np.bitwise_xor.outer(cols, cols)[upper], minlength=int(cols.max()) * 2 + 2)
    a3 = int(pairs[cols].sum()) // 3
    a4 = int((pairs * (pairs - 1) // 2).sum()) // 3
    return a3, a4


@functools.lru_cache(maxsize=256)
def _generators(k: int, m: int) -> tuple[int, ...]:
    """Base-column products (bit masks over the m base factors) for the k - m extra factors.

    The set with the best word-length pattern (highest resolution, then minimum
    aberration) wins; ties go to fewer letters, then to standard (Yates) order, which
    gives the textbook designs (D=ABC; D=AB, E=AC; E=ABCD; D=AB, E=AC, F=BC, G=ABC).
    When there are too many sets to try, generators are added one at a time, each the
    one with the fewest short (length 3, then 4) words so far, ties to the
    highest-order interaction first.
    """
    p = k - m
    if p == 0:
        return ()
    candidates = sorted((mask for mask in range(1, 2**m) if mask.bit_count() >= 2), key=lambda c: (c.bit_count(), c))
    base = [1 << j for j in range(m)]
    if p <= FULL_PATTERN_MAX_P:
        def score(gens: Sequence[int]) -> tuple[int, ...]:
            return _word_lengths([g | 1 << (m + i) for i, g in enumerate(gens)], k)
    else:  # 2^p words are too many to list: rank by the short ones
        def score(gens: Sequence[int]) -> tuple[int, ...]:
            return _short_words([*base, *gens])

    if math.comb(len(candidates), p) <= EXHAUSTIVE_LIMIT:
        return min(
            itertools.combinations(candidates, p), key=lambda gens: (score(gens), sum(g.bit_count() for g in gens))
        )

    def greedy(pool: Sequence[int]) -> tuple[int, ...]:
        chosen: list[int] = []
        for _ in range(p):
            rest = [c for c in pool if c not in chosen]
            chosen.append(min(rest, key=lambda c: (_short_words([*base, *chosen, c]), -c.bit_count(), c)))
        return tuple(chosen)

    # One step at a time is short-sighted; odd-weight columns alone never make a length-3
    # word (resolution IV whenever k <= runs / 2), so try that pool too and keep the better.
    tries = [greedy(candidates)]
    odd = [c for c in candidates if c.bit_count() % 2]
    if len(odd) >= p:
        tries.append(greedy(odd))
    return min(tries, key=score)


@functools.lru_cache(maxsize=256)
def _design(k: int, runs: int) -> tuple[tuple[int, ...], ...]:
    if runs < 2:
        raise ValueError(f"a two-level design needs at least 2 runs, got {runs}")
    if k < 1:
        raise ValueError("a two-level design needs at least one factor")
    if 2**k <= runs:
        m = k
    else:
        m = runs.bit_length() - 1  # the largest power of two that fits
        if k > 2**m - 1:
            raise ValueError(f"{k} factors do not fit a two-level design in {runs} runs (at most {2**m - 1})")
    gens = _generators(k, m)
    rows = []
    for i in range(2**m):
        base = [1 if i >> j & 1 else -1 for j in range(m)]  # Yates order: the first factor alternates fastest
        extra = [math.prod(base[j] for j in range(m) if g >> j & 1) for g in gens]
        rows.append(tuple(base + extra))
    return tuple(rows)


def two_level_design(factors: Sequence[str], runs: int) -> list[dict[str, int]]:
    """A 2^k factorial (+-1 coding, Yates order) if it fits in ``runs``, else a regular 2^(k-p) fraction.

    The fraction has the largest power-of-two number of runs that fits, the first
    log2(runs) factors as its full-factorial base and each other factor set to a
    product of base columns (see ``generators``). ValueError when ``runs < 2`` or the
    factors cannot all be separated (k > runs - 1).
    """
    factors = list(factors)
    if len(set(factors)) != len(factors):
        raise ValueError(f"factor names repeat: {', '.join(factors)}")
    return [dict(zip(factors, row, strict=True)) for row in _design(len(factors), runs)]


def generators(factors: Sequence[str], runs: int) -> list[str]:
    """The design's generators as text, e.g. ['D=ABC'] (empty for a full factorial)."""
    factors = list(factors)
    k = len(factors)
    rows = _design(k, runs)
    m = len(rows).bit_length() - 1
    joiner = "" if all(len(f) == 1 for f in factors) else "*"  # D=ABC; WARMUP=LR*DEPTH*BATCH
    return [f"{factors[m + i]}={joiner.join(factors[j] for j in range(m) if g >> j & 1)}"
            for i, g in enumerate(_generators(k, m))]


def design_label(k: int, runs: int) -> str:
    """'2^3' for a full factorial, '2^(4-1)' for a half fraction (``runs`` as ``two_level_design`` cuts it)."""
    m = len(_design(k, runs)).bit_length() - 1
    return f"2^{k}" if m == k else f"2^({k}-{k - m})"


def levels_design(levels: Mapping[str, Sequence[Any]], runs: int) -> list[dict[str, Any]]:
    """Every combination of the given levels (the first factor varies fastest), if they fit in ``runs``."""
    if not levels:
        raise ValueError("a design needs at least one factor")
    for name, values in levels.items():
        if not values:
            raise ValueError(f"factor {name!r} has no levels")
    cells = math.prod(len(values) for values in levels.values())
    if cells > runs:
        sizes = " x ".join(str(len(v)) for v in levels.values())
        raise ValueError(f"a full factorial of {sizes} = {cells} cells does not fit in {runs} runs")
    names = list(levels)
    combos = itertools.product(*(list(levels[name]) for name in reversed(names)))
    return [dict(zip(names, reversed(combo), strict=True)) for combo in combos]


# --------------------------------------------------------------------------- quantiles


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for i in range(1, 300):
        m2 = 2 * i
        even = i * (b - i) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + i) * (a + b + i) * x / ((a + m2) * (a + m2 + 1))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float | None) -> float:
    """The ``p`` quantile of Student's t (the normal's when ``df`` is None or infinite)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if df is None or math.isinf(df):
        return NormalDist().inv_cdf(p)
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):  # bisection: exact to the last bits in a few microseconds' work
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Effect:
    """One factor's (or interaction's) effect: mean at high minus mean at low, with its CI."""

    name: str  # "LEARNING_RATE" or "LEARNING_RATE×WARMUP"
    estimate: float
    se: float | None  # None: no noise estimate, so no CI
    low: float | None  # confidence interval
    high: float | None
    aliases: tuple[str, ...] = ()  # terms the design cannot tell apart from this one (their sum is estimated)

    @property
    def significant(self) -> bool:
        """Whether the CI excludes 0 (False when the CI is unknown)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "estimate": self.estimate, "se": self.se, "low": self.low, "high": self.high,
                "significant": self.significant, "aliases": list(self.aliases)}


@dataclass(frozen=True)
class Effects:
    """Main effects and interactions from one design's results."""

    main: tuple[Effect, ...]
    interactions: tuple[Effect, ...]
    n: int  # results used
    df: int  # residual degrees of freedom (0: the design is saturated)
    sd: float | None = None  # the noise sd behind the standard errors (given, or from the residuals)
    confidence: float = 0.95
    levels: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)  # factor -> (level coded -1, level coded +1)
    dropped: tuple[str, ...] = ()  # terms the design could not separate from earlier ones
    notes: tuple[str, ...] = ()  # what the design's aliasing and cells that could not run cost (idea waves)

    def __getitem__(self, name: str) -> Effect:
        for effect in (*self.main, *self.interactions):
            if effect.name == name:
                return effect
        raise KeyError(name)

    def describe(self, metric: str, direction: str = "minimize") -> list[str]:
        """Sentences a researcher reads: main effects, biggest first, then interactions."""
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
        ci = f"({self.confidence * 100:g}% CI)"
        lines = []
        for effect in sorted(self.main, key=lambda e: -abs(e.estimate)):
            lines.append(self._main_sentence(effect, metric, direction, ci))
        for effect in sorted(self.interactions, key=lambda e: -abs(e.estimate)):
            name = effect.name + (f" (aliased with {', '.join(effect.aliases)})" if effect.aliases else "")
            a, b = effect.name.split(INTERACTION, 1)
            if effect.half_width is None:
                lines.append(f"{name} interaction {effect.estimate:+.4g} (no noise estimate: significance unknown)")
                continue
            est, half = _pair(effect.estimate, effect.half_width, signed=True)
            verdict = f"the effect of {a} depends on {b}" if effect.significant else "not distinguishable from noise"
            if effect.significant and self._is_idea(a) and self._is_idea(b):
                verdict += self._conditional(a, b, effect, metric)
            lines.append(f"{name} interaction {est} ± {half} {ci}: {verdict}")
        lines += [f"{name} could not be separated from the other terms in this design" for name in self.dropped
                  if INTERACTION not in name]
        lines += list(self.notes)
        guess = self.best_guess(direction)
        if guess is not None and any(self._is_idea(f) for f in self.levels):
            lines.append("best guess (the terms beyond the noise, combined): "
                         + (" + ".join(sorted(guess, key=list(self.levels).index)) or "none of the ideas"))
        return lines

    def _is_idea(self, name: str) -> bool:
        return tuple(self.levels.get(name, ())) == IDEA_LEVELS

    def _conditional(self, a: str, b: str, inter: Effect, metric: str) -> str:
        """': A lowers val_bpb by 0.010 with B, and raises it by 0.002 without' (from the fitted terms)."""
        try:
            main = self[a].estimate
        except KeyError:
            return ""
        with_b, without_b = main + inter.estimate, main - inter.estimate

        def phrase(x: float) -> str:
            return f"{'lowers' if x < 0 else 'raises'} {metric} by {abs(x):.3g}"

        return f" ({a} {phrase(with_b)} together with {b}, {phrase(without_b)} without it)"

    def best_guess(self, direction: str = "minimize") -> set[str] | None:
        """The factors to set high (ideas to switch on) by the terms beyond the noise alone; None if none are.

        Every combination of the factors is predicted from the significant main effects
        and interactions (the others count as zero), and the best one wins.
        """
        terms = [e for e in (*self.main, *self.interactions) if e.significant]
        if not terms:
            return None
        factors = [e.name for e in self.main]
        if len(factors) > 12:
            return None
        best: tuple[float, set[str]] | None = None
        for bits in itertools.product((-1, 1), repeat=len(factors)):
            x = dict(zip(factors, bits, strict=True))
            value = 0.0
            for e in terms:
                parts = e.name.split(INTERACTION)
                value += e.estimate / 2 * math.prod(x.get(p, 0) for p in parts)
            if direction == "maximize":
                value = -value
            on = {f for f, v in x.items() if v > 0}
            if best is None or value < best[0] - 1e-12 or (abs(value - best[0]) <= 1e-12 and len(on) < len(best[1])):
                best = (value, on)
        return best[1] if best is not None else None

    def _main_sentence(self, effect: Effect, metric: str, direction: str, ci: str) -> str:
        low, high = self.levels.get(effect.name, (-1, 1))
        if (low, high) == IDEA_LEVELS:
            change = effect.name
        elif _is_number(low) and _is_number(high):
            span = "" if (low, high) == (-1, 1) else f" from {_short(low)} to {_short(high)}"
            change = f"raising {effect.name}{span}"
        else:
            change = f"{effect.name} {_short(high)} instead of {_short(low)}"
        if effect.aliases:
            change += f" (aliased with {', '.join(effect.aliases)})"
        verb = "lowers" if effect.estimate < 0 else "raises" if effect.estimate > 0 else "changes"
        if effect.half_width is None:
            return f"{change} {verb} {metric} by {abs(effect.estimate):.4g} (no noise estimate: significance unknown)"
        est, half = _pair(abs(effect.estimate), effect.half_width)
        if not effect.significant:
            verdict = "not distinguishable from noise"
        else:
            verdict = "better" if (effect.estimate < 0) == (direction == "minimize") else "worse"
        return f"{change} {verb} {metric} by {est} ± {half} {ci}: {verdict}"

    def to_json(self) -> dict[str, Any]:
        guess = self.best_guess()
        return {
            "main": [e.to_json() for e in self.main],
            "interactions": [e.to_json() for e in self.interactions],
            "n": self.n, "df": self.df, "sd": self.sd, "confidence": self.confidence,
            "levels": {k: list(v) for k, v in self.levels.items()}, "dropped": list(self.dropped),
            "notes": list(self.notes), "best_guess": None if guess is None else sorted(guess),
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pair(estimate: float, half: float, signed: bool = False) -> tuple[str, str]:
    """Estimate and CI half-width to the half-width's precision (two digits if it starts with 1, else one)."""
    if half <= 0 or not math.isfinite(half):
        return (f"{estimate:+.4g}" if signed else f"{estimate:.4g}"), f"{half:g}"
    sign = "+" if signed else ""
    digits = 2 if f"{half:e}"[0] == "1" else 1
    decimals = max(0, digits - 1 - math.floor(math.log10(half)))
    if estimate != 0:  # no more than 4 significant digits of the estimate for a tiny interval
        cap = max(0, 3 - math.floor(math.log10(abs(estimate))))
        if decimals > cap:
            return f"{estimate:{sign}.{cap}f}", f"{half:.1g}"
    return f"{estimate:{sign}.{decimals}f}", f"{half:.{decimals}f}"


def _code(name: str, values: Sequence[Any]) -> tuple[np.ndarray, tuple[Any, Any]]:
    """A factor's values coded onto [-1, +1] (two levels: exactly -1 and +1), and its (low, high) levels."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) < 2:
        raise ValueError(f"factor {name!r} takes a single value: nothing to estimate")
    if all(isinstance(v, int | float) for v in distinct):
        x = np.asarray(values, dtype=float)
        lo, hi = float(x.min()), float(x.max())
        low = min(distinct, key=float)
        high = max(distinct, key=float)
        return (x - (lo + hi) / 2) / ((hi - lo) / 2), (low, high)
    if len(distinct) != 2:
        raise ValueError(f"factor {name!r} has {len(distinct)} non-numeric levels; two are needed")
    low, high = sorted(distinct, key=str)
    return np.array([1.0 if v == high else -1.0 for v in values]), (low, high)


def estimate_effects(
    rows: Sequence[tuple[Mapping[str, Any], float]],
    factors: Sequence[str],
    noise_sd: float | None = None,
    confidence: float = 0.95,
    noise_df: float | None = None,
) -> Effects:
    """Least-squares main effects and two-factor interactions of ``factors`` on the metric.

    ``rows`` are (factor values, metric): +-1 codes or raw values (two levels are coded
    to -1/+1 around their midpoint; more numeric levels linearly onto [-1, +1]; two
    non-numeric levels in sorted order). An effect is twice its coefficient: the mean at
    high minus the mean at low. Interactions the design aliases with an earlier term
    are dropped (exact aliases are named on the term that stays). Standard errors come
    from ``noise_sd`` (normal quantiles, or t with ``noise_df``), else from the residuals
    (t quantiles) when the design leaves degrees of freedom, else they are None.
    """
    factors = list(factors)
    if not factors:
        raise ValueError("no factors to estimate")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if noise_sd is not None and (noise_sd < 0 or not math.isfinite(noise_sd)):
        raise ValueError(f"noise_sd must be a finite non-negative number, got {noise_sd}")
    if len(rows) < 2:
        raise ValueError(f"effects need at least 2 results, got {len(rows)}")
    y = np.array([float(metric) for _, metric in rows])
    if not np.all(np.isfinite(y)):
        raise ValueError("every metric must be finite")
    coded: dict[str, np.ndarray] = {}
    levels: dict[str, tuple[Any, Any]] = {}
    for name in factors:
        try:
            values = [values[name] for values, _ in rows]
        except KeyError:
            raise ValueError(f"factor {name!r} is missing from a row") from None
        coded[name], levels[name] = _code(name, values)

    terms = [(name, coded[name]) for name in factors]
    terms += [(f"{a}{INTERACTION}{b}", coded[a] * coded[b]) for a, b in itertools.combinations(factors, 2)]
    kept: list[tuple[str, np.ndarray]] = []
    aliases: dict[str, list[str]] = {}
    dropped: list[str] = []
    basis = [np.ones(len(y)) / math.sqrt(len(y))]  # orthonormal span of the intercept and kept terms
    for name, column in terms:
        residual = column - sum((q @ column) * q for q in basis)
        if np.linalg.norm(residual) > 1e-9 * max(1.0, float(np.linalg.norm(column))):
            basis.append(residual / np.linalg.norm(residual))
            kept.append((name, column))
            continue
        dropped.append(name)
        for other, existing in kept:
            if np.allclose(column, existing) or np.allclose(column, -existing):
                aliases.setdefault(other, []).append(name)
                break

    x = np.column_stack([np.ones(len(y))] + [column for _, column in kept])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - x.shape[1]
    unscaled = np.linalg.inv(x.T @ x)
    sd: float | None
    if noise_sd is not None:
        sd, quantile_df = float(noise_sd), noise_df
    elif df > 0:
        rss = float(np.sum((y - x @ coef) ** 2))
        sd, quantile_df = math.sqrt(rss / df), df
    else:
        sd, quantile_df = None, None
    q = t_quantile(0.5 + confidence / 2, quantile_df) if sd is not None else None

    main: list[Effect] = []
    interactions: list[Effect] = []
    for j, (name, _) in enumerate(kept, start=1):
        estimate = 2 * float(coef[j])
        se = 2 * sd * math.sqrt(float(unscaled[j, j])) if sd is not None else None
        low, high = (estimate - q * se, estimate + q * se) if se is not None and q is not None else (None, None)
        effect = Effect(name, estimate, se, low, high, tuple(aliases.get(name, ())))
        (interactions if INTERACTION in name else main).append(effect)
    return Effects(
        main=tuple(main), interactions=tuple(interactions), n=len(y), df=df, sd=sd, confidence=confidence,
        levels=levels, dropped=tuple(dropped),
    )


# --------------------------------------------------------------------------- waves


def _wave_rows(history: Iterable[Result], wave_tag: str) -> list[Result]:
    return [r for r in history if r.ok and r.experiment.tags.get(WAVE_TAG) == wave_tag]


def wave_effects(
    history: Iterable[Result], wave_tag: str | int, noise_sd: float | None = None, confidence: float = 0.95
) -> Effects:
    """Effects of the knobs a wave varied (those with exactly two values among its ok results)."""
    wave_tag = str(wave_tag)
    results = _wave_rows(history, wave_tag)
    if len(results) < 2:
        raise ValueError(f"wave {wave_tag}: {len(results)} ok result(s), effects need at least 2")
    names = list(dict.fromkeys(name for r in results for name in r.experiment.knobs))
    factors = [
        name for name in names
        if all(name in r.experiment.knobs for r in results)
        and len(set(r.experiment.knobs[name] for r in results)) == 2
    ]
    if not factors:
        raise ValueError(f"wave {wave_tag}: no knob takes two values among its results")
    rows = [({f: r.experiment.knobs[f] for f in factors}, float(r.run.metric or 0.0)) for r in results]  # ok: a metric
    return estimate_effects(rows, factors, noise_sd=noise_sd, confidence=confidence)


def idea_wave_effects(
    history: Sequence[Result], wave_tag: str, noise_sd: float | None = None, confidence: float = 0.95
) -> Effects:
    """Effects of the ideas (patch factors) of an idea wave: its cells plus its centre as the all-off cell.

    Each idea is a factor at two levels, off and on; cells that could not run (their
    patches conflict) and a fraction's generators are stated in ``notes``.
    """
    import json

    from labfleet.researchers.ideas import CONFLICTS_TAG, IDEAS_TAG, ON_TAG, describe_aliasing, idea_results, metric_of

    cells, centre = idea_results(history, wave_tag)
    if not cells:
        raise ValueError(f"wave {wave_tag}: no ok results")
    tags = cells[0].experiment.tags
    names = [n for n in tags[IDEAS_TAG].split(",") if n]
    rows = []
    for r in cells:
        on = set(filter(None, r.experiment.tags.get(ON_TAG, "").split(",")))
        rows.append(({n: "on" if n in on else "off" for n in names}, metric_of(r)))
    if centre is not None:
        rows.append(({n: "off" for n in names}, metric_of(centre)))
    if len(rows) < 2:
        raise ValueError(f"wave {wave_tag}: {len(rows)} ok result(s), effects need at least 2")
    factors = [n for n in names if len({values[n] for values, _ in rows}) == 2]
    if not factors:
        raise ValueError(f"wave {wave_tag}: no idea was both on and off among its results")
    try:
        conflicts = json.loads(tags.get(CONFLICTS_TAG, "[]"))
    except ValueError:
        conflicts = []
    generators = [g for g in tags.get("generators", "").split(",") if g]
    notes = describe_aliasing(names, generators, conflicts)
    if centre is None:
        notes.append(f"the centre (e{tags.get('centre', '?')}, every idea off) has no result: it is left out")
    missing = [n for n in names if n not in factors]
    notes += [f"{n} was never both on and off among the results: no effect" for n in missing]
    eff = estimate_effects(rows, factors, noise_sd=noise_sd, confidence=confidence)
    return Effects(eff.main, eff.interactions, eff.n, eff.df, eff.sd, eff.confidence, eff.levels, eff.dropped,
                   notes=tuple(notes))


def _is_idea_wave(history: Sequence[Result], tag: str) -> bool:
    return any(r.experiment.tags.get(WAVE_TAG) == tag and "ideas" in r.experiment.tags for r in history)


def session_effects(history: Sequence[Result], noise_sd: float | None = None) -> dict[str, Effects]:
    """Effects per wave tag, knob waves and idea waves (fewer than 3 ok results, or nothing to estimate: left out)."""
    tags = list(dict.fromkeys(r.experiment.tags[WAVE_TAG] for r in history if WAVE_TAG in r.experiment.tags))
    tags.sort(key=lambda t: (0, int(t), "") if t.isdigit() else (1, 0, t))
    out: dict[str, Effects] = {}
    for tag in tags:
        ideas = _is_idea_wave(history, tag)
        if len(_wave_rows(history, tag)) + ideas < MIN_WAVE_RESULTS:  # an idea wave's centre is one more result
            continue
        try:
            out[tag] = (idea_wave_effects if ideas else wave_effects)(history, tag, noise_sd=noise_sd)
        except ValueError:
            continue  # e.g. crashes left a wave whose knobs no longer vary
    return out
