"""`labfleet report`: a folder of PNGs and one self-contained HTML page for a session.

Everything comes from the ledger and the other analysis modules, so a report can
be built while a session runs, after it stopped, or from a copied ledger file.
The page embeds its pictures as data URIs and has no external requests: it can be
mailed or attached to an issue as one file. matplotlib is imported inside the
drawing functions (Agg backend), so importing labfleet stays fast.

Pictures: progress.png (every experiment, the running best, phases),
timeline.png (a Gantt chart of runs per worker), hardware.png (speed and metric
per hardware class), effects.png (main effects and interactions of the waves,
only when there are waves) and cost.png (dollars over time, and what they bought).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labfleet.analysis.cost import cost_over_time, fleet_usd
from labfleet.analysis.hardware import HardwareReport, hardware_report
from labfleet.analysis.noise import NoiseFloor, noise_floors, samples_from_runs
from labfleet.analysis.phases import DIMINISHING, Point, Progress, points_from_snapshot, progress
from labfleet.errors import LabfleetError
from labfleet.ledger import Ledger, Snapshot
from labfleet.records import Decision, Experiment, Result, Run, RunStatus
from labfleet.views import llm_json

FIGSIZE = (10.0, 5.0)  # inches; at DPI this is 1200 x 600 px
DPI = 120
LABEL_CHARS = 26  # kept experiments' labels on the progress plot
MAX_LABELS = 14  # more keeps than this: only the biggest gains get a label
LATEST_WAVES = 3  # waves shown on the effects plot

# One palette for every picture: an outcome has the same colour everywhere.
COLOURS = {
    "baseline": "#1f5fa8",
    "kept": "#2a9d3c",
    "discarded": "#a9a9a9",
    "pending": "#9ec5e8",
    "running": "#f2b827",
    "crashed": "#d62728",
    "timeout": "#f07f1a",
    "lost": "#8e5cc2",
    "cancelled": "#dddddd",
    "best": "#145a24",
}
OUTCOME_LABELS = {
    "baseline": "baseline", "kept": "kept", "discarded": "discarded", "pending": "awaiting decision",
    "running": "running", "crashed": "failed / crashed", "timeout": "timeout", "lost": "lost (retried)",
    "cancelled": "cancelled",
}
BANDS = ("#eef3fa", "#faf5ea")  # alternating phase backgrounds


# --------------------------------------------------------------------------- what the report reads


@dataclass(frozen=True)
class Units:
    """The time axis: hours for a real session, minutes or seconds for a short one."""

    name: str
    seconds: float

    @classmethod
    def for_span(cls, span: float) -> Units:
        if span >= 3600:
            return cls("hours", 3600.0)
        if span >= 120:
            return cls("minutes", 60.0)
        return cls("seconds", 1.0)


@dataclass
class ReportData:
    """A snapshot of one session, read once, that every section draws from."""

    session: Mapping[str, Any]
    metric: str
    direction: str
    start: float
    end: float
    experiments: dict[int, Experiment]
    runs: list[Run]
    workers: dict[str, tuple[str, float]]  # worker id -> (hardware class, price per hour)
    points: list[Point]
    progress: Progress
    noise: dict[str, NoiseFloor]
    hardware: HardwareReport
    decided_at: dict[int, float] = field(default_factory=dict)
    snapshot: Snapshot | None = None  # what it was computed from: costs, model calls, events

    @property
    def sid(self) -> int:
        return int(self.session["id"])

    @property
    def span(self) -> float:
        return max(self.end - self.start, 1e-9)

    @property
    def units(self) -> Units:
        return Units.for_span(self.span)

    @property
    def sign(self) -> float:
        """+1 when lower is better: ``sign * (a - b) > 0`` means b beats a."""
        return 1.0 if self.direction == "minimize" else -1.0

    def better(self, a: float, b: float) -> bool:
        return self.sign * (b - a) > 0

    def t(self, at: float) -> float:
        """A timestamp on the report's time axis."""
        return (at - self.start) / self.units.seconds

    @property
    def baseline(self) -> Experiment | None:
        return next((e for e in self.experiments.values() if e.parent_id is None), None)

    def keeps(self) -> list[Experiment]:
        """The baseline (when decided) and every keep, in decision order: the lineage."""
        order = [self.experiments[p.experiment] for p in self.points if p.kept and p.metric is not None]
        return [e for e in order if e.metric is not None]

    @property
    def best(self) -> Experiment | None:
        keeps = self.keeps()
        return keeps[-1] if keeps else None


def load(ledger: Ledger, session_id: int | None, metric: str, direction: str,
         groups: Mapping[str, str]) -> ReportData:
    """The one read: a ``Snapshot`` of the session (the latest when ``session_id`` is None)."""
    return from_snapshot(ledger.snapshot(session_id), metric, direction, groups)


def from_snapshot(snapshot: Snapshot, metric: str, direction: str, groups: Mapping[str, str]) -> ReportData:
    """The report's data, computed from one frozen ``Snapshot`` of the session."""
    session = snapshot.session
    runs = list(snapshot.runs)
    experiments = {e.id: e for e in snapshot.experiments}
    workers = {w.id: (w.hardware, float(w.price_per_hour or 0.0)) for w in snapshot.workers}
    decided_at = dict(snapshot.decided_at)
    points = points_from_snapshot(snapshot, groups)
    prices = {hw: price for hw, price in workers.values()}
    return ReportData(
        session=dict(session), metric=metric, direction=direction, start=float(session.created_at),
        end=_session_end(snapshot, runs, decided_at.values()), experiments=experiments, runs=runs,
        workers=workers, points=points, progress=progress(points, direction, metric),
        noise=noise_floors(samples_from_runs(runs)), hardware=hardware_report(runs, prices, metric),
        decided_at=decided_at, snapshot=snapshot,
    )


def _session_end(snapshot: Snapshot, runs: Sequence[Run], decided: Iterable[float]) -> float:
    """Now while runs are running; else the last thing that happened (not when the report was built)."""
    if any(r.status == RunStatus.RUNNING for r in runs):
        return snapshot.now
    times = [float(snapshot.session.created_at), *decided]
    times += [t for r in runs for t in (r.started_at, r.ended_at) if t is not None]
    return max(times)


def busy_seconds(data: ReportData) -> float:
    """Time workers spent running, within the session's span."""
    total = 0.0
    for run in data.runs:
        if run.started_at is None:
            continue
        end = data.end if run.ended_at is None else min(run.ended_at, data.end)
        total += max(0.0, end - max(run.started_at, data.start))
    return total


def worker_rows(data: ReportData) -> list[tuple[str, str]]:
    """(worker id, hardware class) for every worker of the session, naturally sorted."""
    rows = {w: hw for w, (hw, _) in data.workers.items()}
    for run in data.runs:
        if run.worker and run.worker not in rows:
            rows[run.worker] = run.hardware or "?"
    return sorted(rows.items(), key=lambda item: _natural(item[0]))


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def utilization(data: ReportData) -> float:
    workers = len(worker_rows(data))
    return busy_seconds(data) / (workers * data.span) if workers and data.end > data.start else 0.0


def fmt_metric(value: float | None) -> str:
    """How every metric in the report is written (the tests use it too)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def fmt_duration(seconds: float) -> str:
    """Seconds, minutes or hours, whichever reads best."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# --------------------------------------------------------------------------- headline numbers


@dataclass(frozen=True)
class Headline:
    best: float | None
    baseline: float | None
    gain: float | None  # > 0 is better
    gain_se: float | None
    done: int  # decided experiments other than the baseline that produced a metric
    failed: int
    pending: int
    runs: int  # final runs
    hours: float
    per_hour: float
    utilization: float
    usd: float
    priced: bool
    llm: dict[str, Any] = field(default_factory=dict)  # the LLM researcher's calls, tokens, dollars
    unboxed: str = ""  # the warning of the session's first run that was not boxed (sandbox), if any
    surrogate: str | None = None  # a simulated session: the model of training it ran against


def surrogate_source(ledger: Ledger, sid: int) -> str | None:
    """Where a simulated session's surrogate came from (its ``surrogate`` event); None: a real session."""
    said = ledger.events_of(sid, "surrogate")
    return said[-1].get("source") if said else None


def _snapshot(data: ReportData) -> Snapshot:
    assert data.snapshot is not None, "ReportData from from_snapshot() carries its snapshot"
    return data.snapshot


def headline(data: ReportData) -> Headline:
    snap = _snapshot(data)
    surrogate = snap.events_of("surrogate")
    base, best = data.baseline, data.best
    decisions = [e.decision for e in data.experiments.values() if e.parent_id is not None]
    done = sum(d in (Decision.KEPT, Decision.DISCARDED) for d in decisions)
    failed = sum(d == Decision.FAILED for d in decisions)
    hours = data.span / 3600 if data.end > data.start else 0.0
    gain = None
    if best is not None and base is not None and base.metric is not None and best.metric is not None:
        gain = data.sign * (base.metric - best.metric)
    return Headline(
        best=best.metric if best else None, baseline=base.metric if base else None, gain=gain,
        gain_se=_gain_se(data, base, best), done=done, failed=failed,
        pending=sum(d == Decision.PENDING for d in decisions),
        runs=sum(1 for r in data.runs if r.status.final), hours=hours,
        per_hour=(done + failed) / hours if hours > 0 else 0.0, utilization=utilization(data),
        usd=fleet_usd(snap.costs), priced=any(p > 0 for _, p in data.workers.values()),
        llm=llm_json(snap.llm), surrogate=surrogate[-1].get("source") if surrogate else None,
        unboxed=next((e.get("warning", "") for e in snap.events_of("runs_unboxed")), ""),
    )


def _gain_se(data: ReportData, base: Experiment | None, best: Experiment | None) -> float | None:
    """The standard error of best minus baseline, on the class the best ran on, when its noise is known."""
    if base is None or best is None or best.id == base.id:
        return None
    done = [r for r in data.runs if r.status == RunStatus.DONE and r.metric is not None and r.hardware]
    best_runs = [r.hardware for r in done if r.experiment_id == best.id]
    if not best_runs:
        return None
    hw = max(set(best_runs), key=best_runs.count)
    floor = data.noise.get(hw or "")
    n_base = sum(1 for r in done if r.experiment_id == base.id and r.hardware == hw)
    if floor is None or not n_base:
        return None
    return floor.sd * math.sqrt(1 / best_runs.count(hw) + 1 / n_base)


# --------------------------------------------------------------------------- drawing helpers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int = 1, height: float = FIGSIZE[1], **kwargs: Any) -> tuple[Any, Any]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=(FIGSIZE[0], height), dpi=DPI, layout="constrained", **kwargs)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    _pyplot().close(fig)
    return path


def _empty(ax: Any, message: str) -> None:
    """An empty panel that says why, instead of a blank square."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#555555",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)


def _metric_label(data: ReportData) -> str:
    return f"{data.metric} ({'lower' if data.direction == 'minimize' else 'higher'} is better)"


# --------------------------------------------------------------------------- 1. progress


def draw_progress(data: ReportData, path: Path) -> Path:
    """Every decided experiment, the running best, and the phases: where the session found its gains."""
    fig, ax = _figure()
    name = data.session["target"]
    valued = [p for p in data.points if p.metric is not None and math.isfinite(p.metric)]
    ax.set_title(f"{name}: {data.metric} over {len(data.points)} decided experiments (session {data.sid})",
                 fontsize=12, loc="left")
    if not valued:
        _empty(ax, "no finished experiment with a metric yet")
        return _save(fig, path)
    xs = {p.experiment: i for i, p in enumerate(data.points)}
    lo, hi = _progress_range(data, [p.metric for p in valued])  # type: ignore[misc]
    ax.set_xlim(-0.6, max(len(data.points) - 0.4, 1.4))
    ax.set_ylim(lo, hi)
    names = _draw_phase_bands(ax, data, xs)
    _draw_points(ax, data, xs, lo, hi)
    _draw_running_best(ax, data, xs)
    _style(ax)
    ax.set_xlabel("experiment # (in decision order; 0 is the baseline)")
    ax.set_ylabel(_metric_label(data))
    fig.legend(loc="outside lower center", ncol=6, frameon=False, fontsize=9)
    _label_keeps(ax, fig, data, xs, names)  # last: it places labels on the final layout
    return _save(fig, path)


def _progress_range(data: ReportData, values: list[float]) -> tuple[float, float]:
    """From just past the best to a bit past the baseline: crashes and outliers must not squash it."""
    base = data.baseline.metric if data.baseline and data.baseline.metric is not None else None
    best = data.best.metric if data.best and data.best.metric is not None else None
    if base is None:
        base = sorted(values)[len(values) // 2] if data.sign > 0 else sorted(values)[(len(values) - 1) // 2]
    if best is None:
        best = min(values) if data.sign > 0 else max(values)
    span = abs(base - best)
    if span <= 0:
        near = sorted(abs(v - base) for v in values if v != base)
        span = near[len(near) // 2] if near else 0.02 * abs(base) or 1.0
    # the best sits about 30% in from the good edge, leaving room for the keeps' labels
    low, high = min(best, base), max(best, base)
    if data.sign > 0:
        return low - 0.55 * span, high + 0.3 * span
    return low - 0.3 * span, high + 0.55 * span


def _draw_phase_bands(ax: Any, data: ReportData, xs: Mapping[int, int]) -> list[Any]:
    """Alternating bands, one per phase, named on the bad edge where there is room; returns the names."""
    names = []
    width_px = ax.get_window_extent().width
    x0, x1 = ax.get_xlim()
    for i, phase in enumerate(data.progress.phases):
        if phase.first not in xs or phase.last not in xs:
            continue
        left, right = xs[phase.first] - 0.5, xs[phase.last] + 0.5
        colour = "#fbeaea" if phase.name == DIMINISHING else BANDS[i % 2]
        ax.axvspan(left, right, color=colour, zorder=0, linewidth=0)
        band_px = (right - left) / (x1 - x0) * width_px
        chars = int(band_px / 7.5)
        if chars >= min(len(phase.name), 8):  # a band too narrow for a readable name gets none
            top = data.sign > 0  # the bad edge, with the failures: the good one is the labels'
            names.append(ax.text(left + 0.1, 0.985 if top else 0.015, _short(phase.name, chars), ha="left",
                                 va="top" if top else "bottom", transform=ax.get_xaxis_transform(), fontsize=8.5,
                                 color="#4a4a4a", style="italic", clip_on=True))
    return names


def _draw_points(ax: Any, data: ReportData, xs: Mapping[int, int], lo: float, hi: float) -> None:
    """Dots by decision; failures and values beyond the range as marks on the bad edge."""
    groups: dict[str, tuple[list[float], list[float]]] = {}
    edge: dict[str, list[float]] = {"failed": [], "off": []}
    for p in data.points:
        exp = data.experiments.get(p.experiment)
        kind = "baseline" if exp is not None and exp.parent_id is None else str(exp.decision if exp else "")
        x = xs[p.experiment]
        if p.metric is None or not math.isfinite(p.metric) or kind == "failed":
            edge["failed"].append(x)
        elif not lo <= p.metric <= hi:
            edge["off"].append(x)
        else:
            groups.setdefault(kind, ([], []))[0].append(x)
            groups[kind][1].append(p.metric)
    styles = {
        "discarded": dict(s=18, color=COLOURS["discarded"], alpha=0.8, label="discarded", zorder=2),
        "pending": dict(s=18, color=COLOURS["pending"], label="awaiting decision", zorder=2),
        "kept": dict(s=46, color=COLOURS["kept"], edgecolor="#0f4a1a", linewidth=0.8, label="kept", zorder=4),
        "baseline": dict(s=70, marker="D", color=COLOURS["baseline"], edgecolor="black", linewidth=0.6,
                         label="baseline", zorder=4),
    }
    for kind in ("discarded", "pending", "kept", "baseline"):
        if kind in groups:
            ax.scatter(*groups[kind], **styles[kind])
    bad_edge = 0.94 if data.sign > 0 else 0.07  # the top for minimize; inside the phase names
    transform = ax.get_xaxis_transform()
    if edge["off"]:
        ax.scatter(edge["off"], [bad_edge] * len(edge["off"]), transform=transform, s=16, clip_on=False,
                   marker="^" if data.sign > 0 else "v", color="#c4c4c4", label="beyond the y range", zorder=3)
    if edge["failed"]:
        ax.scatter(edge["failed"], [bad_edge] * len(edge["failed"]), transform=transform, s=22, marker="x",
                   color=COLOURS["crashed"], linewidth=1.2, label="failed", zorder=3, clip_on=False)


def running_best_steps(data: ReportData, xs: Mapping[int, int]) -> tuple[list[float], list[float]]:
    """The running best as step corners (x in decision order), ending at the plot's right edge."""
    best: float | None = None
    steps_x: list[float] = []
    steps_y: list[float] = []
    for p in data.points:
        if p.kept and p.metric is not None and math.isfinite(p.metric):
            best = p.metric  # a keep is the new champion (the lineage), whatever its class
        if best is not None:
            steps_x.append(xs[p.experiment])
            steps_y.append(best)
    if steps_x:
        steps_x.append(len(data.points) - 0.4)
        steps_y.append(steps_y[-1])
    return steps_x, steps_y


def _draw_running_best(ax: Any, data: ReportData, xs: Mapping[int, int]) -> None:
    steps_x, steps_y = running_best_steps(data, xs)
    if steps_x:
        ax.step(steps_x, steps_y, where="post", color=COLOURS["best"], linewidth=1.8, label="running best",
                zorder=3)


def _label_keeps(ax: Any, fig: Any, data: ReportData, xs: Mapping[int, int], avoid: Sequence[Any] = ()) -> None:
    """Short descriptions of the keeps in the empty region past the running best, never on top of each other.

    Each label tries spots below-left of its point (when lower is better nothing there
    is better or earlier), below-right, then further and further out with a leader line.
    It takes the first spot that stays in the axes and covers no other label, dot or
    step of the running best; a keep with no free spot goes unlabelled (the page's
    table lists every keep).
    """
    keeps = _keeps_to_label(data)[::-1]  # right to left: the latest keeps have the most room
    fig.canvas.draw()  # the final layout: labels are placed in pixels
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent()
    taken = _obstacles(ax, data, xs)
    for artist in avoid:  # the phase names
        box = artist.get_window_extent(renderer)
        taken.append(_rect(box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2))
    px_per_pt = renderer.points_to_pixels(1.0)
    for exp in keeps:
        text = _short(exp.description, LABEL_CHARS)
        width, height, _ = renderer.get_text_width_height_descent(text, _label_font(), ismath=False)
        point = ax.transData.transform((xs[exp.id], exp.metric))
        for dx, dy, ha, va in _label_spots(data.sign):
            anchor = (point[0] + dx * px_per_pt, point[1] + dy * px_per_pt)
            shapes = [_text_corners(anchor, width, height, ha, va)]
            away = abs(dy) > 8
            if away:  # the leader line must not cross another label either
                shapes.append(_segment(point, anchor))
            inside = all(area.x0 <= x <= area.x1 and area.y0 <= y <= area.y1 for x, y in shapes[0])
            if inside and not any(_overlap(mine, other) for mine in shapes for other in taken):
                taken += shapes
                leader = dict(arrowstyle="-", color="#7fa886", linewidth=0.7, shrinkA=0, shrinkB=4,
                              relpos=(1.0 if ha == "right" else 0.0, 1.0 if va == "top" else 0.0))
                ax.annotate(text, (xs[exp.id], exp.metric), xytext=(dx, dy), textcoords="offset points", ha=ha,
                            va=va, fontproperties=_label_font(), color="#0f4a1a", zorder=5,
                            arrowprops=leader if away else None)
                break


def _label_font() -> Any:
    from matplotlib.font_manager import FontProperties

    return FontProperties(size=8.5)


Spot = tuple[float, float, str, str]  # offset x, y (points), ha, va


def _label_spots(sign: float) -> list[Spot]:
    """Where to try a keep's label, best first: ending left of the point on the side of the
    line where nothing is better (nothing earlier is better either), then right, then further out."""
    v = -1.0 if sign > 0 else 1.0
    va = "top" if sign > 0 else "bottom"
    return [(side * 6, depth * v, "right" if side < 0 else "left", va)
            for depth in (6, 18, 30, 42, 54, 68, 82, 96, 110, 126, 142, 158, 174, 190) for side in (-1, 1)]


def _text_corners(anchor: tuple[float, float], width: float, height: float, ha: str, va: str,
                  pad: float = 2.0) -> list[tuple[float, float]]:
    """The four pixel corners of a level label aligned (ha, va) at ``anchor``."""
    x0, x1 = (anchor[0] - width - pad, anchor[0] + pad) if ha == "right" else (anchor[0] - pad, anchor[0] + width + pad)
    y0, y1 = (anchor[1] - height - pad, anchor[1] + pad) if va == "top" else (anchor[1] - pad, anchor[1] + height + pad)
    return _rect(x0, y0, x1, y1)


def _segment(a: Sequence[float], b: Sequence[float], half: float = 1.0, skip: float = 7.0) -> list[tuple[float, float]]:
    """A thin quadrilateral around a leader line from a point to b, less its first ``skip`` pixels (the dot)."""
    length = math.hypot(b[0] - a[0], b[1] - a[1]) or 1.0
    ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    a = (a[0] + ux * skip, a[1] + uy * skip)
    nx, ny = -uy * half, ux * half
    return [(a[0] + nx, a[1] + ny), (b[0] + nx, b[1] + ny), (b[0] - nx, b[1] - ny), (a[0] - nx, a[1] - ny)]


def _overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> bool:
    """Whether two convex quadrilaterals overlap (separating axis test)."""
    for poly in (a, b):
        for (x0, y0), (x1, y1) in zip(poly, [*poly[1:], poly[0]], strict=True):
            nx, ny = y0 - y1, x1 - x0
            pa = [nx * x + ny * y for x, y in a]
            pb = [nx * x + ny * y for x, y in b]
            if max(pa) < min(pb) or max(pb) < min(pa):
                return False
    return True


def _keeps_to_label(data: ReportData) -> list[Experiment]:
    """Every keep, or the MAX_LABELS biggest steps when there are more."""
    keeps = [e for e in data.keeps() if e.parent_id is not None]
    if len(keeps) <= MAX_LABELS:
        return keeps
    lineage = data.keeps()
    gain = {k.id: data.sign * ((p.metric or 0.0) - (k.metric or 0.0))
            for p, k in zip(lineage, lineage[1:], strict=False)}
    chosen = set(sorted(gain, key=gain.__getitem__, reverse=True)[:MAX_LABELS])
    return [k for k in keeps if k.id in chosen]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _obstacles(ax: Any, data: ReportData, xs: Mapping[int, int]) -> list[list[tuple[float, float]]]:
    """Pixel shapes a label must not cover: the dots and the running best's steps."""
    to_px = ax.transData.transform
    shapes = []
    for p in data.points:
        if p.metric is not None and math.isfinite(p.metric):
            px, py = to_px((xs[p.experiment], p.metric))
            shapes.append(_rect(px - 5, py - 5, px + 5, py + 5))
    steps_x, steps_y = running_best_steps(data, xs)
    corners = [to_px(c) for c in zip(steps_x, steps_y, strict=True)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:], strict=False):
        shapes.append(_rect(x0, y0 - 2, x1, y0 + 2))  # the flat part
        shapes.append(_rect(x1 - 2, min(y0, y1), x1 + 2, max(y0, y1)))  # the drop
    return shapes


# --------------------------------------------------------------------------- 2. timeline


def run_outcome(run: Run, exp: Experiment | None) -> str:
    """The colour key of one run's bar."""
    if run.status == RunStatus.RUNNING:
        return "running"
    if run.status == RunStatus.DONE:
        if exp is None:
            return "discarded"
        if exp.parent_id is None:
            return "baseline"
        return {"kept": "kept", "pending": "pending"}.get(str(exp.decision), "discarded")
    if run.status in (RunStatus.TIMEOUT, RunStatus.LOST, RunStatus.CANCELLED):
        return str(run.status)
    return "crashed"


def draw_timeline(data: ReportData, path: Path) -> Path:
    """Which worker ran what, when, and how it ended: idle gaps are where the fleet wasted time."""
    rows = worker_rows(data)
    height = min(max(FIGSIZE[1], 1.6 + 0.32 * len(rows)), 16.0)
    fig, ax = _figure(height=height)
    ax.set_title(
        f"Runs per worker (session {data.sid})\nfleet utilization {utilization(data):.0%}: busy "
        f"{fmt_duration(busy_seconds(data))} of {len(rows)} worker{'s' if len(rows) != 1 else ''} × "
        f"{fmt_duration(data.span if data.end > data.start else 0.0)}",
        fontsize=12, loc="left",
    )
    placed = [r for r in data.runs if r.started_at is not None and r.worker]
    if not placed:
        _empty(ax, "no run has started yet")
        return _save(fig, path)
    index = {w: i for i, (w, _) in enumerate(rows)}
    bars: dict[tuple[str, bool], tuple[list[float], list[float], list[float]]] = {}
    for run in placed:
        start = data.t(run.started_at)  # type: ignore[arg-type]
        end = data.t(run.ended_at if run.ended_at is not None else data.end)
        key = (run_outcome(run, data.experiments.get(run.experiment_id)), run.role != "screen")
        ys, lefts, widths = bars.setdefault(key, ([], [], []))
        ys.append(index[run.worker])  # type: ignore[index]
        lefts.append(start)
        widths.append(max(end - start, 0.0))
    for (outcome, special), (ys, lefts, widths) in sorted(bars.items()):
        ax.barh(ys, widths, left=lefts, height=0.72, color=COLOURS[outcome],
                edgecolor="#333333" if special else COLOURS[outcome], linewidth=0.6 if special else 0.3,
                hatch="////" if special else None, zorder=2)
    ax.set_yticks(range(len(rows)), [f"{w} ({hw})" for w, hw in rows], fontsize=9 if len(rows) < 30 else 7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, data.t(data.end))
    ax.set_xlabel(f"{data.units.name} since the session started")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    _timeline_legend(fig, {o for o, _ in bars}, any(s for _, s in bars))
    return _save(fig, path)


def _timeline_legend(fig: Any, outcomes: set[str], special: bool) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=COLOURS[o], label=OUTCOME_LABELS[o]) for o in OUTCOME_LABELS if o in outcomes]
    if special:
        handles.append(Patch(facecolor="white", edgecolor="#333333", hatch="////",
                             label="validate / confirm / noise / calibrate run"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False, fontsize=9)


# --------------------------------------------------------------------------- 3. hardware


def draw_hardware(data: ReportData, path: Path) -> Path:
    """Speed per class, and the same code's metric per class: why results are compared within a class."""
    fig, (left, right) = _figure(ncols=2)
    fig.suptitle(f"Hardware classes (session {data.sid})", fontsize=12, x=0.01, ha="left")
    _draw_speed(left, data)
    _draw_same_code(right, data)
    return _save(fig, path)


def _draw_speed(ax: Any, data: ReportData) -> None:
    classes = data.hardware.classes
    for attr, label in (("steps_per_second", "training steps per second"),
                        ("tokens_per_second", "tokens per second")):
        values = {hw: getattr(c, attr) for hw, c in classes.items() if getattr(c, attr) is not None}
        if values:
            break
    else:
        _empty(ax, "no speed figures (num_steps, tokens_per_second)\nin the runs' results")
        return
    names = sorted(values)
    bars = ax.bar(names, [values[n] for n in names], color="#4c78a8", width=0.6, zorder=2)
    notes = []
    for n in names:
        c = classes[n]
        price = f", ${c.price_per_hour:.2f}/h" if c.price_per_hour else ""
        notes.append(f"{_number(values[n])}\n{c.runs} run{'s' if c.runs != 1 else ''}{price}")
    ax.bar_label(bars, notes, padding=3, fontsize=8.5)
    ax.set_ylim(0, max(values.values()) * 1.3 or 1.0)
    ax.set_title(label, fontsize=11)
    ax.set_ylabel(label)
    _style(ax)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _draw_same_code(ax: Any, data: ReportData) -> None:
    """The baseline's and the champion's runs per class: mean with one sd (or the class's noise sd)."""
    done = [r for r in data.runs if r.status == RunStatus.DONE and r.metric is not None and r.hardware]
    subjects = [("baseline", data.baseline, COLOURS["baseline"])]
    if data.best is not None and data.baseline is not None and data.best.id != data.baseline.id:
        subjects.append((f"best (e{data.best.id})", data.best, COLOURS["kept"]))
    classes = sorted({r.hardware for r in done if any(s and r.experiment_id == s.id for _, s, _ in subjects)})
    if not classes:
        _empty(ax, "the baseline has no finished run yet")
        return
    for k, (label, exp, colour) in enumerate(subjects):
        xs, ys, errs = [], [], []
        for i, hw in enumerate(classes):
            values = [float(r.metric or 0.0) for r in done
                      if exp is not None and r.experiment_id == exp.id and r.hardware == hw]
            if not values:
                continue
            mean = sum(values) / len(values)
            # few repeats: the class's pooled noise floor says more than their own spread
            sd = _sd(values) if len(values) > 2 or hw not in data.noise else data.noise[hw].sd
            xs.append(i + (k - (len(subjects) - 1) / 2) * 0.22)
            ys.append(mean)
            errs.append(sd or 0.0)
        ax.errorbar(xs, ys, yerr=errs, fmt="o", color=colour, capsize=5, markersize=7, linewidth=1.4,
                    label=label, zorder=3)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_title(f"{data.metric} of the same code per class (± 1 sd)", fontsize=11)
    ax.set_ylabel(_metric_label(data))
    ax.legend(fontsize=9, frameon=False)
    ax.margins(y=0.25)
    _style(ax)


def _sd(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# --------------------------------------------------------------------------- 4. effects


@dataclass(frozen=True)
class EffectBar:
    """One bar of the effects plot: a wave's main effect or interaction with its interval."""

    wave: str
    name: str
    estimate: float
    low: float | None
    high: float | None
    interaction: bool

    @property
    def significant(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def history(data: ReportData) -> list[Result]:
    """One Result per decided experiment: its latest done run, else its latest final run."""
    latest: dict[int, Run] = {}
    for run in data.runs:  # ordered by id: later runs win, a done run over a failed one
        held = latest.get(run.experiment_id)
        if run.status.final and (run.status == RunStatus.DONE or held is None or held.status != RunStatus.DONE):
            latest[run.experiment_id] = run
    order = sorted((e for e in data.experiments.values() if e.decision != Decision.PENDING and e.id in latest),
                   key=lambda e: (data.decided_at.get(e.id) or 0.0, e.id))
    return [Result(e, latest[e.id]) for e in order]


def session_effects(data: ReportData) -> tuple[list[EffectBar], list[str], str]:
    """The latest waves' effects and their sentences, or a note saying why there are none."""
    if not any("wave" in e.tags for e in data.experiments.values()):
        return [], [], "no waves in this session: single changes are in the progress plot"
    try:
        from labfleet.analysis import effects as effects_module

        compute: Callable[..., Any] = effects_module.session_effects
    except (ImportError, AttributeError):
        return [], [], "the effects analysis (labfleet.analysis.effects) is not available in this version"
    reference = data.hardware.reference
    sd = data.noise[reference].sd if reference in data.noise else None
    waves = list(compute(history(data), noise_sd=sd).items())[-LATEST_WAVES:]
    bars: list[EffectBar] = []
    findings: list[str] = []
    for tag, fx in waves:
        for effect in (*fx.main, *fx.interactions):
            bars.append(EffectBar(str(tag), effect.name, effect.estimate, effect.low, effect.high,
                                  effect in fx.interactions))
        findings += [f"wave {tag}: {line}" for line in fx.describe(data.metric, data.direction)]
    return bars, findings, "" if bars else "no wave has enough finished results to estimate effects yet"


def draw_effects(bars: Sequence[EffectBar], data: ReportData, path: Path) -> Path:
    """Main effects and interactions with their intervals: which changes matter beyond the noise."""
    height = min(max(FIGSIZE[1], 1.8 + 0.32 * len(bars)), 16.0)
    fig, ax = _figure(height=height)
    ys = list(range(len(bars)))
    colours = [_effect_colour(b, data) for b in bars]
    ax.barh(ys, [b.estimate for b in bars], color=colours, height=0.62, zorder=2,
            hatch=["////" if b.interaction else None for b in bars], edgecolor="white", linewidth=0.4)
    with_ci = [(y, b.estimate, b.low, b.high) for y, b in zip(ys, bars, strict=True)
               if b.low is not None and b.high is not None]
    if with_ci:
        ax.errorbar([e for _, e, _, _ in with_ci], [y for y, _, _, _ in with_ci], fmt="none", ecolor="#222222",
                    xerr=[[e - lo for _, e, lo, _ in with_ci], [hi - e for _, e, _, hi in with_ci]],
                    capsize=3, linewidth=1, zorder=3)
    for y, (a, b) in enumerate(zip(bars, bars[1:], strict=False)):
        if a.wave != b.wave:
            ax.axhline(y + 0.5, color="#999999", linewidth=0.8, linestyle="--")
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(ys, [f"wave {b.wave} · {_short(b.name, 36)}" for b in bars], fontsize=9)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_xlabel(f"effect on {data.metric}: mean at the high level minus mean at the low level (95% CI)")
    ax.set_title(f"Effects estimated from the latest waves (session {data.sid})", fontsize=12, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    _effects_legend(fig, data)
    return _save(fig, path)


def _effect_colour(bar: EffectBar, data: ReportData) -> str:
    """Green or red for a main effect that helps or hurts beyond the noise; purple for a real interaction."""
    if not bar.significant:
        return "#b8c2cc"
    if bar.interaction:
        return COLOURS["lost"]
    return COLOURS["kept"] if data.sign * bar.estimate < 0 else COLOURS["crashed"]


def _effects_legend(fig: Any, data: ReportData) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COLOURS["kept"], label=f"improves {data.metric}"),
        Patch(color=COLOURS["crashed"], label=f"worsens {data.metric}"),
        Patch(color="#b8c2cc", label="within noise (CI includes 0) or unknown"),
        Patch(facecolor=COLOURS["lost"], edgecolor="white", hatch="////", label="interaction beyond noise"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False, fontsize=9)


# --------------------------------------------------------------------------- 5. cost


def draw_cost(data: ReportData, path: Path, priced: bool) -> Path:
    """What the fleet cost over time, and what each dollar bought (worker time when no prices are set)."""
    fig, (left, right) = _figure(ncols=2)
    spend = _spend(data, priced)
    unit = "GPU dollars" if priced else f"worker-{data.units.name}"
    note = "" if priced else f" (no prices set: $0; worker-{data.units.name} instead)"
    fig.suptitle(f"Cost (session {data.sid}){note}", fontsize=12, x=0.01, ha="left")
    if not spend:
        _empty(left, "no run has finished yet")
        _empty(right, "no run has finished yet")
        return _save(fig, path)
    times = [0.0] + [data.t(t) for t, _ in spend]
    totals = [0.0] + [c for _, c in spend]
    left.step(times, totals, where="post", color="#4c78a8", linewidth=1.8)
    left.fill_between(times, totals, step="post", color="#4c78a8", alpha=0.15)
    left.set_xlabel(f"{data.units.name} since the session started")
    left.set_ylabel(f"cumulative {unit}")
    spent = f"${totals[-1]:,.2f}" if priced else f"{totals[-1]:.2f} {unit}"
    left.set_title(f"{spent} on finished runs", fontsize=11)
    left.set_xlim(0, max(data.t(data.end), times[-1]))
    left.set_ylim(0, totals[-1] * 1.1 or 1.0)
    _style(left)
    _draw_best_per_cost(right, data, spend, unit)
    return _save(fig, path)


def _spend(data: ReportData, priced: bool) -> list[tuple[float, float]]:
    """(time, cumulative spend) at each finished run's end: dollars, or busy time without prices."""
    if priced:
        return cost_over_time(_snapshot(data))
    total, points = 0.0, []
    for run in sorted((r for r in data.runs if r.started_at is not None and r.ended_at is not None),
                      key=lambda r: r.ended_at or 0.0):
        total += max(0.0, (run.ended_at or 0.0) - (run.started_at or 0.0)) / data.units.seconds
        points.append((run.ended_at or 0.0, total))
    return points


def _draw_best_per_cost(ax: Any, data: ReportData, spend: Sequence[tuple[float, float]], unit: str) -> None:
    """The running best at the spend when each keep was decided: the price of each improvement."""
    keeps = [(data.decided_at.get(e.id) or data.start, e) for e in data.keeps()]
    if not keeps:
        _empty(ax, "no result yet")
        return
    xs, ys = [], []
    for at, exp in keeps:
        xs.append(max((c for t, c in spend if t <= at), default=0.0))
        ys.append(exp.metric)
    xs.append(spend[-1][1])
    ys.append(ys[-1])
    ax.step(xs, ys, where="post", color=COLOURS["best"], linewidth=1.8)
    ax.scatter(xs[:-1], ys[:-1], color=COLOURS["kept"], s=30, zorder=3)
    ax.set_xlabel(f"cumulative {unit}")
    ax.set_ylabel(f"best {data.metric} so far")
    ax.set_title("running best against spend", fontsize=11)
    ax.set_xlim(0, xs[-1] * 1.03 or 1.0)
    ax.margins(y=0.15)
    _style(ax)


# --------------------------------------------------------------------------- the page


@dataclass
class Section:
    title: str
    image: Path | None = None
    caption: str = ""
    findings: list[str] = field(default_factory=list)


def build_report(
    ledger: Ledger, session_id: int | None, out: Path, *, metric: str, direction: str,
    groups: Mapping[str, str] | None = None, title: str = "", holdout: Sequence[str] = (),
) -> Path:
    """Write the PNGs and ``index.html`` into ``out``; returns the page's path.

    ``holdout``: lines comparing validation with the holdout metric for the lineage
    (``integrity.holdout_lines``); the report is for people, never for researchers.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(ledger, session_id, metric, direction, groups or {})
    head = headline(data)
    (out / "effects.png").unlink(missing_ok=True)  # a stale one from an earlier report would mislead
    effects, effect_findings, effect_note = session_effects(data)
    sections = [
        Section("Progress", draw_progress(data, out / "progress.png"),
                "Every decided experiment in decision order; the line is the best so far, bands are phases.",
                data.progress.findings or ["no phases yet: no experiment has been kept"]),
        Section("Fleet timeline", draw_timeline(data, out / "timeline.png"),
                "One row per worker, one bar per run, coloured by outcome; hatched bars are repeats.",
                [f"fleet utilization {head.utilization:.0%} (busy time / (workers × span))"]),
        Section("Hardware", draw_hardware(data, out / "hardware.png"),
                "Speed per class, and the same code's metric per class.",
                (data.hardware.findings or ["one hardware class: nothing to compare"]) + noise_findings(data)),
        Section("Effects", draw_effects(effects, data, out / "effects.png") if effects else None,
                "Main effects and interactions of the latest waves (bars), with confidence intervals.",
                effect_findings or ([effect_note] if effect_note else [])),
        Section("Cost", draw_cost(data, out / "cost.png", head.priced),
                "Cumulative spend over time, and the best metric each dollar (or worker-hour) bought.",
                cost_findings(data, head)),
    ]
    if holdout:
        sections.append(Section("Holdout", None, "Validation against the holdout metric for each kept version "
                                "(the holdout is never shown to researchers).", list(holdout)))
    page = out / "index.html"
    page.write_text(render_html(data, head, sections, title), encoding="utf-8")
    return page


def noise_findings(data: ReportData) -> list[str]:
    if not data.noise:
        return ["noise floor: not measured yet (no experiment has repeated seeds on one class)"]
    return [f"noise floor on {hw}: sd {fmt_metric(f.sd)} of one run's {data.metric} "
            f"({f.df} degrees of freedom from {f.groups} repeated experiment{'s' if f.groups != 1 else ''})"
            for hw, f in sorted(data.noise.items())]


def cost_findings(data: ReportData, head: Headline) -> list[str]:
    if not head.priced:
        return ["no prices set for this fleet's workers: the cost is $0 (give workers a price to track spend)"]
    lines = [f"the fleet cost ${head.usd:,.2f} in {fmt_duration(head.hours * 3600)}"]
    if head.gain is not None and head.gain > 0 and head.usd > 0:
        lines.append(f"{data.metric} improved by {fmt_metric(head.gain)}: {head.gain / head.usd:.2e} per dollar")
    return lines


CSS = """
body { font: 15px/1.5 -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
main { max-width: 1240px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; }
.sub { color: #666; margin-bottom: 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; padding: 10px 12px; }
.card b { display: block; font-size: 19px; } .card span { color: #666; font-size: 13px; }
section { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; padding: 4px 18px 14px;
          margin-top: 18px; }
img { max-width: 100%; height: auto; display: block; margin: 8px auto; }
.caption { color: #555; font-size: 14px; } ul { margin: 6px 0; } .note { color: #777; font-style: italic; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eee; } th { background: #fafafa; }
.alarm { background: #fdecea; border: 2px solid #c62828; color: #8e0000; padding: 10px 14px; margin: 12px 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
"""


def render_html(data: ReportData, head: Headline, sections: Sequence[Section], title: str) -> str:
    esc = html.escape
    s = data.session
    heading = title or f"{s['target']}: session {data.sid}"
    config = json.loads(s["config"]) if s.get("config") else {}
    sub = (f"researcher {s['researcher']} · {s['status']} · branch {s['branch']} · "
           f"{len(worker_rows(data))} workers · budget {config.get('budget_seconds') or 'target default'} s")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(heading)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(heading)}</h1>", f'<div class="sub">{esc(sub)}</div>',
    ]
    if head.unboxed:  # said once, loudly: these results were measured without the run box
        parts.append(f'<div class="alarm"><b>WARNING: {esc(head.unboxed)}.</b> '
                     "See <code>labfleet doctor</code>.</div>")
    parts += [
        _cards(data, head),
    ]
    for section in sections:
        parts.append(_section_html(section))
    parts.append(_keeps_table(data))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _cards(data: ReportData, head: Headline) -> str:
    gain = "n/a"
    if head.gain is not None:
        gain = fmt_metric(head.gain) + (f" ± {fmt_metric(head.gain_se)}" if head.gain_se is not None else "")
    cards = [
        (fmt_metric(head.best), f"best {data.metric}"),
        (fmt_metric(head.baseline), "baseline"),
        (gain, "gain over the baseline" + (" (± 1 s.e.)" if head.gain_se is not None else "")),
        (f"{head.done} done / {head.failed} failed", f"experiments ({head.pending} pending)"),
        (str(head.runs), "runs finished"),
        (fmt_duration(head.hours * 3600), "session span"),
        (f"{head.per_hour:.1f}", "experiments per hour"),
        (f"{head.utilization:.0%}", "fleet utilization"),
        (f"${head.usd:,.2f}" if head.priced else "$0 (no prices set)", "GPU cost"),
    ]
    if head.llm["calls"]:
        cards.append((f"${head.llm['usd']:,.2f}", f"LLM cost ({head.llm['calls']} calls, "
                      f"{head.llm['input_tokens'] + head.llm['output_tokens']:,} tokens)"))
    if head.surrogate:
        cards.insert(0, ("simulated", f"against the surrogate {head.surrogate}"))
    body = "".join(f'<div class="card"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
                   for v, k in cards)
    return f'<div class="cards">{body}</div>'


def _section_html(section: Section) -> str:
    esc = html.escape
    parts = [f"<section><h2>{esc(section.title)}</h2>"]
    if section.image is not None:
        uri = "data:image/png;base64," + base64.b64encode(section.image.read_bytes()).decode("ascii")
        parts.append(f'<img src="{uri}" alt="{esc(section.title)}: {esc(section.image.name)}">')
        parts.append(f'<p class="caption">{esc(section.caption)}</p>')
    if section.findings:
        cls = "" if section.image is not None else ' class="note"'
        parts.append(f"<ul{cls}>" + "".join(f"<li>{esc(f)}</li>" for f in section.findings) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def _keeps_table(data: ReportData) -> str:
    esc = html.escape
    lineage = data.keeps()
    rows = []
    base = data.baseline.metric if data.baseline else None
    for previous, exp in zip(lineage, lineage[1:], strict=False):
        step = data.sign * ((previous.metric or 0.0) - (exp.metric or 0.0))
        total = data.sign * (base - (exp.metric or 0.0)) if base is not None else None
        point = next((p for p in data.points if p.experiment == exp.id), None)
        rows.append(
            f"<tr><td>e{exp.id}</td><td>{esc(exp.description)}</td><td>{esc(point.group if point else '')}</td>"
            f'<td class="num">{fmt_metric(exp.metric)}</td><td class="num">{fmt_metric(step)}</td>'
            f'<td class="num">{fmt_metric(total)}</td></tr>'
        )
    if not rows:
        return '<section><h2>Kept experiments</h2><p class="note">no experiment has been kept yet</p></section>'
    head = ("<tr><th>id</th><th>description</th><th>changed</th><th>metric</th><th>gain over previous best</th>"
            "<th>gain over the baseline</th></tr>")
    return f"<section><h2>Kept experiments</h2><table>{head}{''.join(rows)}</table></section>"
