"""Code ideas as factors: named patches composed into the cells of a two-level design.

An **idea** is a named patch against the centre (the champion when the wave is
made). A wave over k ideas runs the cells of a 2^k factorial, or of a regular
2^(k-p) fraction when that is too many for the fleet (``analysis.effects``
chooses the generators). A cell switches some ideas on. Each idea alone must apply
to the centre's files (``git apply``) and compile; a cell merges its ideas' changes
in the wave's fixed order (the order the ideas were given): each change is a set of
replaced line ranges of the centre, the ranges of a cell's ideas must not overlap
(adjacent lines are fine; insertions at one place go in the wave's order), and the
merged files must compile. The all-off cell is the
centre itself, already measured, so a 2^3 wave costs 7 new runs; the fraction is the
one that contains it (the generators' signs are chosen so).

A cell that does not apply (two patches touch the same lines) or does not compile
is not run: every cell of the wave records it in its ``conflicts`` tag, and
``describe_aliasing`` says what that costs (e.g. the two ideas never ran together,
so their interaction cannot be estimated and each one's effect is measured with the
other off). The design's own aliasing (a fraction's generators, e.g. C=AB: the
effect of C cannot be told from A×B) is stated the same way.

**Novelty.** ``signature(patch)`` is the identity of a change up to its presentation:
the multiset of removed and added lines with whitespace collapsed, ``#`` comments
and blank lines dropped, and numbers spelt canonically (``1e-3`` = ``0.001``), so
the same idea under another name, another hunk order, other context lines or other
indentation has the same signature. A change of knob lines only is a repeat only on
the same parent code (the same values from another version are another setting). ``Memory`` holds the signature of every patch
in the ledger (experiments, and each idea of each wave, from its tags) and every
setting of knobs tried from a parent: a repeat is found before it costs a run, and
the earlier experiment is named. Semantically equal code written differently (a
renamed variable, a reordered expression) is not caught: that would need the model
to judge it, and the prompt's memory of ideas and their effects is there for that.

Pure over records and file texts (plus ``git apply`` in a scratch folder): no
ledger, no session.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labfleet.errors import IdeaError
from labfleet.records import Experiment, Proposal, Result, SessionState
from labfleet.researchers import space
from labfleet.target import KnobValue, unified_diff

WAVE_PREFIX = "i"  # idea waves are tagged wave=i1, i2, ... (knob waves are plain numbers)
IDEAS_TAG = "ideas"  # the wave's ideas in order, comma-separated
ON_TAG = "on"  # the ideas this cell switches on
IDEAS_JSON_TAG = "ideas_json"  # every idea's name, description, hypothesis and patch: a restart rebuilds the wave
CONFLICTS_TAG = "conflicts"  # cells that could not run: [{"on": [...], "reason": "..."}]
BEST_GUESS_TAG = "best_of_ideas"  # a fraction's best guess, when no cell ran it: the wave's tag
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_.])")


# --------------------------------------------------------------------------- identity


def _canonical_number(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        value = float(text)
    except ValueError:
        return text
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def normalized_line(line: str) -> str:
    """A changed line as compared: comment dropped, whitespace collapsed, numbers canonical."""
    code = line.split("#", 1)[0] if "#" in line and not ('"' in line or "'" in line) else line
    code = " ".join(code.split())
    return _NUMBER.sub(_canonical_number, code)


def changed_lines(patch: str, skip: Iterable[str] = ()) -> list[str]:
    """The patch's removed and added lines, normalized, as sorted ``-line`` / ``+line`` entries.

    Lines that assign one of the names in ``skip`` (knobs) are left out, and a line
    both removed and added (moved, or changed only in its comment) cancels.
    """
    skip_re = re.compile(rf"^\s*(?:{'|'.join(map(re.escape, skip))})\s*[:=]") if skip else None
    removed: dict[str, int] = {}
    added: dict[str, int] = {}
    for line in patch.splitlines():
        if line.startswith(("---", "+++")) or line[:1] not in ("-", "+"):
            continue
        body = line[1:]
        if skip_re is not None and skip_re.match(body):
            continue
        norm = normalized_line(body)
        if not norm:
            continue
        bucket = removed if line[0] == "-" else added
        bucket[norm] = bucket.get(norm, 0) + 1
    out = []
    for norm in set(removed) | set(added):
        common = min(removed.get(norm, 0), added.get(norm, 0))
        out += [f"-{norm}"] * (removed.get(norm, 0) - common) + [f"+{norm}"] * (added.get(norm, 0) - common)
    return sorted(out)


def signature(patch: str, skip: Iterable[str] = ()) -> str:
    """The identity of a change (see the module docstring); '' for a patch that changes no code."""
    lines = changed_lines(patch, skip)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16] if lines else ""


# --------------------------------------------------------------------------- ideas and waves


@dataclass(frozen=True)
class Idea:
    """A named change: a patch against the centre's files."""

    name: str
    patch: str
    description: str = ""
    hypothesis: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "patch": self.patch, "description": self.description,
                "hypothesis": self.hypothesis}


@dataclass(frozen=True)
class Cell:
    index: int  # row of the design (Yates order of the base factors)
    on: tuple[str, ...]  # ideas switched on, in the wave's order
    patch: str  # the composed change against the centre ('' for the centre itself)
    error: str = ""  # why it cannot run ('' when it can)
    clash: tuple[str, ...] = ()  # the smallest set of its ideas that fails together (a pair, usually)


@dataclass(frozen=True)
class IdeaWave:
    """A design over ideas around one centre, its cells composed and checked."""

    ideas: tuple[Idea, ...]
    design: str  # "2^3", "2^(4-1)"
    generators: tuple[str, ...]  # e.g. ("C=-A*B",): empty for a full factorial
    cells: tuple[Cell, ...]
    letters: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.ideas)

    @property
    def conflicts(self) -> list[Cell]:
        return [c for c in self.cells if c.error]

    def conflicts_json(self) -> str:
        return json.dumps([{"on": list(c.on), "clash": list(c.clash), "reason": c.error} for c in self.conflicts])


def check_names(names: Sequence[str]) -> None:
    for name in names:
        if not NAME.match(name):
            raise IdeaError(f"idea name {name!r}: use a letter then letters, digits, _ . - (at most 40)")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise IdeaError(f"idea names repeat: {', '.join(dupes)}")


def design_rows(k: int, runs: int) -> tuple[list[tuple[int, ...]], str, tuple[str, ...]]:
    """Rows (+-1) of a 2^k or 2^(k-p) design in ``runs`` runs that include the all-off row, its label and generators.

    ``analysis.effects`` chooses the generators (highest resolution, minimum
    aberration); a generated column whose sign at the all-low base row is +1 is
    negated, which keeps the design's resolution and puts the centre in it.
    """
    from labfleet.analysis.effects import _design, _generators, design_label

    rows = [list(r) for r in _design(k, runs)]
    m = len(rows).bit_length() - 1
    gens = _generators(k, m)
    letters = [chr(ord("A") + i) for i in range(k)]
    words = []
    for j, g in enumerate(gens):
        col = m + j
        negate = rows[0][col] == 1
        if negate:
            for row in rows:
                row[col] = -row[col]
        words.append(f"{letters[col]}={'-' if negate else ''}{''.join(letters[b] for b in range(m) if g >> b & 1)}")
    return [tuple(r) for r in rows], design_label(k, runs), tuple(words)


def runs_for(k: int, workers: int) -> int:
    """Cells for a wave of ``k`` ideas on ``workers`` free workers: a power of two, at most 2^k.

    At least 8 (a full 2^3, or a resolution-IV 2^(4-1), separates main effects from
    two-idea interactions) and enough to separate every idea; more to fill the fleet
    (the centre is one of the cells and costs nothing, so ``workers + 1`` cells fill it).
    """
    def pow2(x: int) -> int:
        return 1 << max(0, x - 1).bit_length()

    return min(2**k, max(8, pow2(workers + 1), pow2(k + 1)))


def _git_apply(root: Path, patch: str, check: bool) -> str:
    """``git apply`` of ``patch`` to the files in the scratch repo ``root``: '' or the error."""
    args = ["git", "-C", str(root), "apply", "--recount", "--whitespace=nowarn"] + (["--check"] if check else []) + ["-"]
    proc = subprocess.run(args, input=patch if patch.endswith("\n") else patch + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.removeprefix("error: ") for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return "; ".join(lines[-2:]) or f"git apply exited {proc.returncode}"
    return ""


def _edits(base: list[str], new: list[str]) -> list[tuple[int, int, list[str]]]:
    """``new`` as replacements of line ranges of ``base``: (start, end, lines), in order."""
    matcher = difflib.SequenceMatcher(None, base, new, autojunk=False)
    return [(i1, i2, new[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def merge(base: str, versions: Sequence[tuple[str, str]]) -> tuple[str, tuple[str, str] | None]:
    """Every version's change from ``base`` in one text, in the order given; or the first two that overlap.

    A change is a replacement of a range of base lines. Two changes combine when their
    ranges do not overlap (adjacent lines are fine); insertions at the same place go
    in the order given. ``versions`` are (name, text).
    """
    lines = base.splitlines(keepends=True)
    edits = []
    for order, (name, text) in enumerate(versions):
        edits += [(i1, i2, order, name, new) for i1, i2, new in _edits(lines, text.splitlines(keepends=True))]
    edits.sort(key=lambda e: (e[0], e[1] > e[0], e[2]))  # by position; insertions before a replacement there
    for (a1, a2, _, a_name, _), (b1, b2, _, b_name, _) in zip(edits, edits[1:]):
        if a_name != b_name and (b1 < a2 or (a1 == b1 and a2 > a1 and b2 > b1)):
            return "", (a_name, b_name)
    out, at = [], 0
    for i1, i2, _, _, new in edits:
        out += lines[at:i1] + new
        at = max(at, i2)
    out += lines[at:]
    return "".join(out), None


def compose(files: Mapping[str, str], ideas: Sequence[Idea], runs: int) -> IdeaWave:
    """The wave's cells: each one's ideas applied to ``files`` in order, checked to apply and compile.

    ``IdeaError`` when an idea alone does not apply or compile (that is the idea's
    fault, not a combination's) or the names are bad.
    """
    ideas = tuple(ideas)
    if not ideas:
        raise IdeaError("a wave needs at least one idea")
    check_names([i.name for i in ideas])
    k = len(ideas)
    runs = min(runs, 2**k)
    try:
        rows, label, gens = design_rows(k, runs)
    except ValueError as exc:
        raise IdeaError(str(exc)) from None
    letters = {chr(ord("A") + i): idea.name for i, idea in enumerate(ideas)}
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="labfleet-ideas-") as tmp:
        root = Path(tmp)
        subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True)
        alone: dict[str, dict[str, str]] = {}  # idea -> its version of every file

        def version(idea: Idea) -> tuple[dict[str, str], str]:
            """The files with ``idea`` alone applied to the centre, or the reason it does not apply."""
            if idea.name in alone:
                return alone[idea.name], ""
            for path, text in files.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(text)
            error = _git_apply(root, idea.patch, check=True) or _git_apply(root, idea.patch, check=False)
            if error:
                return {}, f"{idea.name} does not apply to the centre: {error}"
            new = {}
            for path in files:
                if not (root / path).is_file():
                    return {}, f"{idea.name} deletes {path}"
                new[path] = (root / path).read_text()
            alone[idea.name] = new
            return new, ""

        def build(on: Sequence[Idea]) -> tuple[str, str]:
            """The cell's patch: every idea's change from the centre merged into the files, in order."""
            current = dict(files)
            for idea in on:
                _, error = version(idea)
                if error:
                    return "", error
            for path, text in files.items():
                changed = [(i.name, alone[i.name][path]) for i in on if alone[i.name][path] != text]
                if not changed:
                    continue
                merged, overlap = merge(text, changed)
                if overlap is not None:
                    return "", f"{overlap[1]} changes the lines {overlap[0]} changes in {path}"
                current[path] = merged
            for path in files:
                if path.endswith(".py") and current[path] != files[path]:
                    try:
                        compile(current[path], path, "exec")
                    except SyntaxError as exc:
                        return "", f"{' + '.join(i.name for i in on)}: {path} does not compile ({exc.msg}, line {exc.lineno})"
            return "".join(unified_diff(p, files[p], current[p]) for p in sorted(files)), ""

        for idea in ideas:  # each idea alone must work: a broken idea is the proposer's to fix
            patch, error = build([idea])
            if error:
                raise IdeaError(f"idea {error}")
            if not patch:
                raise IdeaError(f"idea {idea.name} changes nothing")
        clashes: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}

        def clash(on: Sequence[Idea], error: str) -> tuple[tuple[str, ...], str]:
            """The smallest failing subset: the pairs first (the usual culprit), else the whole cell."""
            for a, b in ((a, b) for i, a in enumerate(on) for b in on[i + 1:]):
                key = (a.name, b.name)
                if key not in clashes:
                    _, pair_error = build([a, b])
                    clashes[key] = (key, pair_error)
                if clashes[key][1]:
                    return clashes[key]
            return tuple(i.name for i in on), error

        for index, row in enumerate(rows):
            on = [idea for idea, level in zip(ideas, row, strict=True) if level > 0]
            patch, error = build(on) if on else ("", "")
            if on and not error and not patch:
                error = f"{' + '.join(i.name for i in on)} cancel out: the cell is the centre"
            culprits: tuple[str, ...] = ()
            if error:
                culprits, why = clash(on, error)
                error = why or error
            cells.append(Cell(index, tuple(i.name for i in on), patch, error, culprits))
    named = tuple(_rename(g, letters) for g in gens)
    return IdeaWave(ideas, label, named, tuple(cells), letters)


def _rename(generator: str, letters: Mapping[str, str]) -> str:
    left, right = generator.split("=")
    sign = "-" if right.startswith("-") else ""
    return f"{letters[left]}={sign}{'×'.join(letters[c] for c in right.lstrip('-'))}"


def describe_aliasing(names: Sequence[str], generators: Sequence[str], conflicts: Sequence[Mapping[str, object]]) -> list[str]:
    """Sentences: what the fraction's generators and the cells that could not run cost the estimates."""
    lines = []
    for g in generators:
        left, right = g.split("=")
        sign = "minus " if right.startswith("-") else ""
        lines.append(f"{left} is aliased with {sign}{right.lstrip('-')} (a fractional design): its effect "
                     f"cannot be told apart from that interaction")
    groups: dict[tuple[str, ...], list[Mapping[str, object]]] = {}
    for conflict in conflicts:
        culprits = tuple(conflict.get("clash") or conflict.get("on") or ())  # type: ignore[call-overload]
        groups.setdefault(culprits, []).append(conflict)
    for culprits, cells in groups.items():
        reason = str(cells[0].get("reason", ""))
        count = f"{len(cells)} cell{'s' * (len(cells) != 1)}"
        if len(culprits) >= 2:
            together = " and ".join(culprits)
            lines.append(f"{together} do not combine ({reason}); the {count} with all of them on did not run, so "
                         f"their interaction cannot be estimated and each one's effect is measured with the "
                         f"other{'s' * (len(culprits) > 2)} off")
        else:
            lines.append(f"{count} with {' + '.join(culprits) or 'no idea'} on did not run: {reason}")
    return lines


def cell_proposals(wave: IdeaWave, number: int, centre: Experiment, metric: str,
                   extra_tags: Mapping[str, str] | None = None) -> list[Proposal]:
    """The cells to run (not the centre, not the conflicts), as proposals from ``centre``, in design order."""
    ideas_json = json.dumps([i.to_json() for i in wave.ideas])
    names = ",".join(wave.names)
    by_name = {i.name: i for i in wave.ideas}
    out = []
    for cell in wave.cells:
        if not cell.on or cell.error:
            continue
        hypothesis = "; ".join(f"{n}: {by_name[n].hypothesis}" for n in cell.on if by_name[n].hypothesis)
        out.append(Proposal(
            description=f"ideas wave {number} cell {cell.index}: {' + '.join(cell.on)}",
            hypothesis=hypothesis or f"{' + '.join(cell.on)} move {metric}; a {wave.design} design over "
                                     f"{', '.join(wave.names)} separates their effects",
            patch=cell.patch, parent=centre.id,
            tags={
                "wave": f"{WAVE_PREFIX}{number}", "cell": str(cell.index), "design": wave.design,
                IDEAS_TAG: names, ON_TAG: ",".join(cell.on), "centre": str(centre.id),
                "generators": ",".join(wave.generators), CONFLICTS_TAG: wave.conflicts_json(),
                IDEAS_JSON_TAG: ideas_json, **(extra_tags or {}),
            },
        ))
    return out


def wave_number(tag: str) -> int | None:
    """The number of an idea wave's tag (``i3`` -> 3); None for other waves."""
    if tag.startswith(WAVE_PREFIX) and tag[len(WAVE_PREFIX):].isdigit():
        return int(tag[len(WAVE_PREFIX):])
    return None


def ideas_of(exp: Experiment) -> list[Idea]:
    """The ideas an idea-wave experiment's tags carry ([] for other experiments)."""
    try:
        return [Idea(d["name"], d["patch"], d.get("description", ""), d.get("hypothesis", ""))
                for d in json.loads(exp.tags.get(IDEAS_JSON_TAG, "[]"))]
    except (ValueError, KeyError, TypeError):
        return []


# --------------------------------------------------------------------------- memory


@dataclass
class Tried:
    """One idea (or plain patch) seen before: where, and under what name."""

    experiment: int
    name: str
    wave: str = ""
    own: bool = True  # False: known from a wave's list of ideas, not (yet) from the experiment that ran it alone


class Memory:
    """Every change and every knob setting tried in a session, for rejecting repeats by identity.

    Built from ``state.history`` and ``state.pending`` (so it survives a restart):
    the signature of each experiment's patch (its whole change from its parent, knob
    lines included) and of each idea of each idea wave; and, for experiments that
    change only knobs, the knob values tried from each parent's code.
    """

    def __init__(self, knob_names: Iterable[str] = ()) -> None:
        self.knob_names = tuple(knob_names)
        self.patches: dict[str, Tried] = {}
        self.settings: dict[tuple[str, tuple[tuple[str, KnobValue], ...]], int] = {}
        self._read: set[int] = set()

    @classmethod
    def of(cls, state: SessionState) -> Memory:
        memory = cls(state.knobs)
        memory.update(state)
        return memory

    def update(self, state: SessionState) -> None:
        exps: list[Experiment] = [r.experiment for r in state.history] + list(state.pending)
        for exp in (state.baseline, state.champion):
            if exp is not None:
                exps.append(exp)
        by_id = {e.id: e for e in exps}
        for exp in exps:
            if exp.id in self._read:
                continue
            self._read.add(exp.id)
            self.add_experiment(exp, by_id.get(exp.parent_id) if exp.parent_id is not None else None)

    def key(self, patch: str, parent_code: str) -> str:
        """A change's identity: its signature; for a change of knob lines only, on its parent's code too
        (the same knob values from another version are another setting, not a repeat)."""
        sig = signature(patch)
        if not sig:
            return ""
        return sig if signature(patch, self.knob_names) else f"{sig}@{parent_code}"

    def add_experiment(self, exp: Experiment, parent: Experiment | None = None) -> None:
        wave = exp.tags.get("wave", "")
        code = parent.commit if parent is not None and parent.commit else str(exp.parent_id)
        for idea in ideas_of(exp):
            sig = self.key(idea.patch, code)
            if sig and sig not in self.patches:
                self.patches[sig] = Tried(exp.id, idea.name, wave, own=False)
        sig = self.key(exp.patch, code)
        if sig and exp.commit:  # a rejected experiment (no commit) was never run: not a repeat
            known = self.patches.get(sig)
            if known is None or not known.own:  # the experiment that ran the change itself is the one to name
                name = known.name if known is not None else exp.description
                self.patches[sig] = Tried(exp.id, name, wave)
        if exp.commit and exp.parent_id is not None and not signature(exp.patch, self.knob_names):
            self.settings.setdefault((code, space.key(exp.knobs)), exp.id)

    def repeats_patch(self, patch: str, parent_code: str = "") -> Tried | None:
        """The earlier experiment (or idea) making the same change; knob-only changes count on the same code only."""
        sig = self.key(patch, parent_code)
        return self.patches.get(sig) if sig else None

    def repeats_setting(self, parent: Experiment, knobs: Mapping[str, KnobValue]) -> int | None:
        """The experiment that already ran ``knobs`` (over the parent's) on the parent's code, if any."""
        full = {**parent.knobs, **knobs}
        return self.settings.get((parent.commit, space.key(full)))

    def why_repeat(self, proposal: Proposal, parent: Experiment) -> str:
        """'' for a new proposal, else a sentence naming the earlier experiment."""
        if proposal.patch:
            tried = self.repeats_patch(proposal.patch, parent.commit)
            if tried is not None:
                what = f"idea {tried.name!r}" + (f" of wave {tried.wave}" if tried.wave else "")
                return (f"it repeats e{tried.experiment} ({what}): the same change up to whitespace, comments, "
                        "number spelling and context")
            return ""
        if proposal.knobs:
            earlier = self.repeats_setting(parent, proposal.knobs)
            if earlier is not None:
                return f"it repeats e{earlier}: the same knob values on the same code"
        return ""

    def remember(self, proposal: Proposal, parent: Experiment, exp_id: int = 0) -> None:
        """Count a proposal handed out (not yet in the ledger) so the same call does not repeat it."""
        if proposal.patch:
            sig = self.key(proposal.patch, parent.commit)
            if sig:
                self.patches.setdefault(sig, Tried(exp_id, proposal.description, proposal.tags.get("wave", "")))
        elif proposal.knobs:
            self.settings.setdefault((parent.commit, space.key({**parent.knobs, **proposal.knobs})), exp_id)


# --------------------------------------------------------------------------- what was learned


def idea_results(history: Sequence[Result], wave: str) -> tuple[list[Result], Result | None]:
    """An idea wave's ok cell results and its centre's result (the all-off cell), from the history."""
    cells = [r for r in history if r.ok and r.experiment.tags.get("wave") == wave and IDEAS_TAG in r.experiment.tags]
    centre = None
    if cells:
        try:
            centre_id = int(cells[0].experiment.tags.get("centre", ""))
        except ValueError:
            centre_id = -1
        centre = next((r for r in history if r.experiment.id == centre_id and r.ok), None)
    return cells, centre


def metric_of(result: Result) -> float:
    mean = result.experiment.metric
    value = mean if mean is not None and math.isfinite(mean) else result.run.metric
    assert value is not None
    return float(value)
