"""Git operations on a target repo: versions are commits, experiments are patches.

An experiment's version is built without touching the user's work tree or index:
the parent tree is read into a temporary index, the patch is applied there
(``git apply --cached``), and the result becomes an immutable commit object.
``export_tree`` writes any commit into a fresh folder (a run directory).

``LazyCommits`` makes versions in-process for sessions whose executor never reads
them (the simulator): each commit is hashed here exactly as git would hash it and
written into the repository only when something names it in a git call.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labfleet.errors import GitError, PatchError

# Every git labfleet runs ignores what a repository (or an experiment that wrote into its
# .git) can make git execute: hooks, an fsmonitor command, external diff and textconv
# programs; the system-wide config is skipped too.
GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "diff.external=",
       "-c", "core.untrackedCache=false"]
_SAFE_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}

# Commits made by labfleet are reproducible and need no user identity.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "labfleet",
    "GIT_AUTHOR_EMAIL": "labfleet@localhost",
    "GIT_COMMITTER_NAME": "labfleet",
    "GIT_COMMITTER_EMAIL": "labfleet@localhost",
}


def git(
    repo: Path,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    error: type[GitError] = GitError,
) -> str:
    """Run ``git -C repo args``; return stdout, raise ``error`` with git's own last line."""
    if _LAZY:
        _write_named(repo, args)
    proc = subprocess.run(
        [*GIT, "-C", str(repo), *args],
        input=input,
        capture_output=True,
        text=True,
        env={**os.environ, **_SAFE_ENV, **_IDENTITY, **(env or {})},
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit {proc.returncode}"
        raise error(f"git {args[0]}: {reason.removeprefix('error: ').removeprefix('fatal: ')}")
    return proc.stdout


def is_repo(folder: Path) -> bool:
    proc = subprocess.run(
        [*GIT, "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
        env={**os.environ, **_SAFE_ENV},
    )
    return proc.returncode == 0 and Path(proc.stdout.strip()).resolve() == Path(folder).resolve()


def resolve(repo: Path, rev: str = "HEAD") -> str:
    """Full sha of a commit-ish."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except GitError:
        raise GitError(f"{rev!r} is not a commit in {repo}") from None


def dirty_files(repo: Path, relevant: Iterable[str] | None = None) -> list[str]:
    """Files that differ from HEAD: every changed tracked file, and untracked (not ignored) ones.

    With ``relevant`` (the target's editable and frozen files and its labfleet.toml), an
    untracked file counts only if it is one of those: a ``run.log`` or ``notes.md``
    beside the target never reaches a run (runs are built from commits), so it is not
    a change to the target.
    """
    out = git(repo, "status", "--porcelain", "-z", "--untracked-files=all")
    wanted = set(relevant) if relevant is not None else None
    fields = out.split("\0")
    files: list[str] = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename or copy: the source path follows as its own field
            i += 1
        if status == "??" and wanted is not None and path not in wanted:
            continue
        files.append(path)
    return files


def init_repo(folder: Path, message: str) -> str:
    """``git init`` a folder and commit everything in it; return the commit."""
    git(folder, "init", "--quiet", "--initial-branch=main")
    git(folder, "add", "--all")
    git(folder, "commit", "--quiet", "--no-verify", "-m", message)
    return resolve(folder)


def exclude_path(repo: Path, pattern: str) -> None:
    """Add ``pattern`` to .git/info/exclude so labfleet's files never dirty the repo."""
    info = Path(git(repo, "rev-parse", "--git-path", "info/exclude").strip())
    if not info.is_absolute():
        info = repo / info
    existing = info.read_text().splitlines() if info.exists() else []
    if pattern not in existing:
        info.parent.mkdir(parents=True, exist_ok=True)
        with info.open("a") as f:
            f.write(("\n" if existing and existing[-1] else "") + pattern + "\n")


def show_file(repo: Path, commit: str, path: str) -> str:
    return git(repo, "show", f"{commit}:{path}")


# Modes git records for a regular file; everything else (120000 symlink, 160000 gitlink) is refused.
_REGULAR_MODES = ("100644", "100755")
_CONFIG_FILE = "labfleet.toml"  # the target's own configuration: never editable by an experiment
_MODE_LINE = re.compile(r"^(?:old|new|new file|deleted file) mode (\d+)\s*$")


def patch_paths(repo: Path, patch: str) -> list[str]:
    """Every path a patch touches (both sides of renames), without applying it."""
    return [p for p, _binary, _renamed in _numstat(repo, patch)]


def _numstat(repo: Path, patch: str, recount: bool = False) -> list[tuple[str, bool, bool]]:
    """(path, binary, part of a rename or copy) for each path ``git apply --numstat`` reports."""
    lenient = ["--recount"] if recount else []
    out = git(repo, "apply", "--numstat", "-z", *lenient, "-", input=patch, error=PatchError)
    entries: list[tuple[str, bool, bool]] = []
    fields = out.split("\0")
    i = 0
    while i < len(fields):
        field = fields[i]
        if not field:
            i += 1
            continue
        added, _deleted, path = field.split("\t", 2)
        binary = added == "-"
        if path:  # plain change: the path is in the same field
            entries.append((path, binary, False))
            i += 1
        else:  # rename or copy with -z: the two paths follow as their own fields
            entries += [(fields[i + 1], binary, True), (fields[i + 2], binary, True)]
            i += 3
    return entries


_HEADER_PATHS = re.compile(r"^(?:diff --git a/(\S+) b/(\S+)|--- a/(\S+)|\+\+\+ b/(\S+))\s*$", re.MULTILINE)


def check_patch_text(patch: str) -> None:
    """The checks that need no repository: ``PatchError`` with a one-line reason, or nothing.

    No mode but a regular file's (symlinks and gitlinks, wherever they point), no
    binary patch, no rename or copy, no deletion, no ``labfleet.toml``, no path outside
    the folder. Researchers' pre-checks call it on their patches; ``check_patch`` too.
    """
    if not patch.strip():
        raise PatchError("the patch is empty")
    for line in patch.splitlines():
        match = _MODE_LINE.match(line)
        if match and match.group(1) not in _REGULAR_MODES:
            what = {"120000": "a symlink", "160000": "a gitlink (submodule)"}.get(match.group(1), "a special file")
            raise PatchError(f"the patch makes an editable path {what} (mode {match.group(1)}): "
                             "editable files must be regular files")
        if line.startswith(("GIT binary patch", "Binary files ")):
            raise PatchError("the patch is binary: editable files change only by text diffs")
    paths = {p for match in _HEADER_PATHS.finditer(patch) for p in match.groups() if p}
    _check_paths(paths)
    if re.search(r"^(?:rename|copy) (?:from|to) ", patch, re.MULTILINE):
        raise PatchError("the patch renames or copies a file: edit editable files in place")
    for header in re.findall(r"^diff --git a/(\S+) b/\S+\n(?:(?:old|new) mode \d+\n)?deleted file mode",
                             patch, re.MULTILINE):
        if not re.search(rf"^diff --git a/\S+ b/{re.escape(header)}\n(?:index \S+\n)?new file mode",
                         patch, re.MULTILINE):
            raise PatchError(f"the patch deletes {header}: editable files are changed in place")


def _check_paths(paths: Iterable[str]) -> None:
    for path in sorted(paths):
        if path.startswith("/") or ".." in Path(path).parts or path.split("/")[0] == ".git":
            raise PatchError(f"the patch touches {path}, which is outside the target's files")
        if path == _CONFIG_FILE:
            raise PatchError(f"the patch touches {_CONFIG_FILE}, which an experiment may never change")


def check_patch(repo: Path, patch: str, allowed: Iterable[str], recount: bool = False) -> list[str]:
    """The one patch checker: the paths a patch touches, or ``PatchError`` with a one-line reason.

    A patch may only change the contents of ``allowed`` (editable) regular files:
    ``check_patch_text``, then what ``git apply`` itself reads from the patch (every
    path it would touch, binary or not). Used by ``commit_patch`` (materialize,
    submit, the session) and by ``apply_to_texts`` (the LLM researcher's pre-check).
    ``recount``: read hunks leniently (``git apply --recount``; models miscount lines).
    """
    check_patch_text(patch)
    entries = _numstat(repo, patch, recount)
    paths = list(dict.fromkeys(p for p, _b, _r in entries))
    _check_paths(paths)
    allowed = list(dict.fromkeys(allowed))
    outside = sorted({p for p in paths if p not in allowed})
    if outside:
        raise PatchError(f"the patch touches {', '.join(outside)}, which is not editable "
                         f"(editable: {', '.join(allowed) or 'none'})")
    if any(renamed for _p, _b, renamed in entries):
        raise PatchError("the patch renames or copies a file: edit editable files in place")
    if any(binary for _p, binary, _r in entries):
        raise PatchError("the patch is binary: editable files change only by text diffs")
    return paths


def commit_patch(repo: Path, parent: str, patch: str, message: str, allowed: Iterable[str]) -> str:
    """Commit ``parent`` + ``patch`` as a new commit object; never touches the work tree.

    Raises ``PatchError`` if the patch is empty, does not apply, or fails ``check_patch``;
    the resulting entries of the touched paths must be regular files (or deleted).
    """
    paths = check_patch(repo, patch, allowed)
    with tempfile.TemporaryDirectory(prefix="labfleet-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", parent, env=env)
        git(repo, "apply", "--cached", "--whitespace=nowarn", "-", input=patch, env=env, error=PatchError)
        tree = git(repo, "write-tree", env=env).strip()
    if tree == git(repo, "rev-parse", f"{parent}^{{tree}}").strip():
        raise PatchError("the patch changes nothing")
    for line in git(repo, "ls-tree", "-z", tree, "--", *paths).split("\0"):
        if line:
            mode, _kind, rest = line.split(" ", 2)
            if mode not in _REGULAR_MODES:
                raise PatchError(f"{rest.split(chr(9), 1)[1]} would not be a regular file (mode {mode})")
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message).strip()


def apply_to_texts(files: Mapping[str, str], patch: str, allowed: Iterable[str]) -> dict[str, str]:
    """``files`` (path -> text) after ``patch``, applied in a scratch repo; ``PatchError`` if it cannot be.

    For patches not written by git (a model's): ``check_patch`` first, leniently
    (``--recount``), then ``git apply --recount``. The patch may not delete a file.
    Nothing but a temporary folder is touched.
    """
    if not patch.endswith("\n"):
        patch += "\n"
    with tempfile.TemporaryDirectory(prefix="labfleet-apply-") as tmp:
        root = Path(tmp)
        git(root, "init", "--quiet")
        check_patch(root, patch, allowed, recount=True)
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        try:
            git(root, "apply", "--recount", "--whitespace=nowarn", "-", input=patch, error=PatchError)
        except PatchError as exc:
            raise PatchError(f"the patch does not apply to the current files: {exc}") from None
        new = {}
        for path in files:
            if not (root / path).is_file():
                raise PatchError(f"the patch deletes {path}")
            new[path] = (root / path).read_text()
        return new


def export_tree(repo: Path, commit: str, dest: Path) -> None:
    """Write the files of ``commit`` into ``dest`` (created; must not exist or be empty)."""
    if _LAZY:
        _write_named(repo, [commit])
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [*GIT, "-C", str(repo), "archive", "--format=tar", commit],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **_SAFE_ENV},
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:  # e.g. an absolute symlink, or one pointing outside the tree
        proc.kill()
        proc.wait()
        raise PatchError(f"{commit[:12]} cannot be materialized: {exc}") from None
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0:
        raise GitError(f"git archive {commit}: {stderr.strip() or 'failed'}")


def diff(repo: Path, old: str, new: str) -> str:
    return git(repo, "diff", "--no-ext-diff", "--no-textconv", old, new)


def commit_file_hashes(repo: Path, commit: str, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file as stored in ``commit`` (``"missing"`` if absent)."""
    hashes = {}
    if _LAZY:
        _write_named(repo, [commit])
    for rel in paths:
        proc = subprocess.run([*GIT, "-C", str(repo), "show", f"{commit}:{rel}"], capture_output=True,
                              env={**os.environ, **_SAFE_ENV})
        hashes[rel] = hashlib.sha256(proc.stdout).hexdigest() if proc.returncode == 0 else "missing"
    return hashes


def file_hashes(folder: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each file (``"missing"`` for one that does not exist)."""
    hashes = {}
    for rel in paths:
        path = folder / rel
        hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    return hashes


_METRIC_LINE = r"^\+(?!\+\+).*\b{name}\b"


def added_lines_mention(patch: str, word: str) -> bool:
    """Whether a line the patch adds mentions ``word`` (e.g. the metric's name)."""
    return re.search(_METRIC_LINE.format(name=re.escape(word)), patch, re.MULTILINE) is not None


def update_ref(repo: Path, ref: str, commit: str) -> None:
    git(repo, "update-ref", ref, commit)


def advance_branch(repo: Path, branch: str, commit: str, message: str) -> str:
    """Move ``branch`` to ``commit``'s version, keeping the branch's history linear in keeps.

    When the kept commit descends from the branch head, this is a fast-forward.
    Otherwise (it was proposed from an older champion while another change was
    kept) a commit with the kept tree and both parents records the switch, so
    ``git log --first-parent`` lists the keeps in order.
    """
    ref = f"refs/heads/{branch}"
    head = resolve(repo, ref)
    if git(repo, "merge-base", head, commit).strip() == head:
        git(repo, "update-ref", ref, commit, head)
        return commit
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}").strip()
    new = git(repo, "commit-tree", tree, "-p", head, "-p", commit, "-m", message).strip()
    git(repo, "update-ref", ref, new, head)
    return new


# --------------------------------------------------------------------------- versions made in-process

_LAZY: dict[str, LazyCommits] = {}  # repo path (as given and resolved) -> its store of unwritten commits
_SHA = re.compile(r"[0-9a-f]{40}")
_REGISTRY_LOCK = threading.Lock()


def _write_named(repo: Path, args: Iterable[str]) -> None:
    """Before a git call on ``repo``: write every unwritten commit its arguments name."""
    store = _LAZY.get(str(repo))
    if store is None:
        store = _LAZY.get(str(Path(repo).resolve()))
    if store is not None:
        store.write([sha for arg in args for sha in _SHA.findall(str(arg))])


@dataclass(frozen=True)
class _Version:
    """A commit made in-process: ``parent`` + ``changes`` (what ``edit`` makes of each file)."""

    parent: str
    changes: Mapping[str, Any]  # root-level path -> the edit's argument (e.g. knob values)
    tree: str
    message: bytes  # the commit message as stored (ends with a newline, as commit-tree writes it)
    when: int  # author and committer time, epoch seconds


def _object_sha(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


class LazyCommits:
    """Commits hashed in-process and written into the repository only when read.

    For a session whose executor never reads a version (the simulator: its runs are a
    model of the knobs), a git commit per experiment costs more than everything else
    the session does. Here a version is its parent, the root-level files it changes
    and the argument of ``edit(path, parent_text, argument) -> text`` (knob values), so
    it needs no git process and little memory; its sha is the one git computes for
    the same blob, tree and commit (tree and commit objects built as git builds them).

    A version is written (with its unwritten ancestors, through one ``git fast-import``
    that must agree on every sha) the moment any git call in this process names its
    sha: ``advance_branch`` on a keep, a researcher's ``show_file``, ``export_tree``.
    ``close(write_all=True)`` writes the rest and their refs (a simulation that is kept);
    ``close(write_all=False)`` leaves them unwritten (a throw-away clone nobody reads).
    Processes other than this one (a harness started by a real executor) cannot see
    unwritten versions: real executors use ``commit_patch``.
    """

    CACHE = 256  # recent versions' file texts and root trees kept in memory

    def __init__(self, repo: Path, edit: Callable[[str, str, Any], str]) -> None:
        self.repo = Path(repo)
        self.edit = edit
        self._pending: dict[str, _Version] = {}
        self._refs: dict[str, str] = {}  # unwritten sha -> the ref to give it once written
        self._written_trees: dict[str, str] = {}  # written commit -> its tree (parents: few)
        self._texts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._roots: OrderedDict[str, dict[bytes, tuple[bytes, bytes]]] = OrderedDict()  # tree -> name: (mode, sha)
        self._lock = threading.RLock()
        with _REGISTRY_LOCK:
            for key in {str(self.repo), str(self.repo.resolve())}:
                if key in _LAZY:
                    raise GitError(f"{repo} already has a store of in-process commits")
                _LAZY[key] = self

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, sha: str) -> bool:
        return sha in self._pending

    # ----------------------------------------------------------------- reading

    def text(self, commit: str, path: str) -> str:
        """A file of a version, written or not (``show_file`` for written ones, cached)."""
        key = (commit, path)
        with self._lock:
            cached = self._texts.get(key)
            if cached is not None:
                self._texts.move_to_end(key)
                return cached
            version = self._pending.get(commit)
            if version is None:
                text = git(self.repo, "show", f"{commit}:{path}")
            elif path in version.changes:
                text = self.edit(path, self.text(version.parent, path), version.changes[path])
            else:
                text = self.text(version.parent, path)
            self._remember(self._texts, key, text)
            return text

    def _root(self, tree: str, commit: str) -> dict[bytes, tuple[bytes, bytes]]:
        """The root tree's entries (name -> mode, raw sha)."""
        entries = self._roots.get(tree)
        if entries is not None:
            self._roots.move_to_end(tree)
            return entries
        version = self._pending.get(commit)
        if version is None:
            entries = {}
            for line in git(self.repo, "ls-tree", "-z", tree).split("\0"):
                if line:
                    meta, name = line.split("\t", 1)
                    mode, _kind, sha = meta.split(" ")
                    # ls-tree pads a subtree's mode (040000); the tree object stores 40000
                    entries[name.encode()] = (mode.lstrip("0").encode(), bytes.fromhex(sha))
        else:
            entries = self._tree_entries(version.parent, version.changes, commit)[1]
        self._remember(self._roots, tree, entries)
        return entries

    def _tree_of(self, commit: str) -> str:
        version = self._pending.get(commit)
        if version is not None:
            return version.tree
        tree = self._written_trees.get(commit)
        if tree is None:
            tree = self._written_trees[commit] = resolve_tree(self.repo, commit)
        return tree

    def _tree_entries(self, parent: str, changes: Mapping[str, Any], commit: str | None = None,
                      ) -> tuple[str, dict[bytes, tuple[bytes, bytes]]]:
        entries = dict(self._root(self._tree_of(parent), parent))
        for path, argument in sorted(changes.items()):
            old = entries.get(path.encode())
            if old is None or old[0].decode() not in _REGULAR_MODES:
                raise PatchError(f"{path} is not a regular file in {parent[:12]}")
            text = self.text(commit, path) if commit is not None else self.edit(path, self.text(parent, path), argument)
            entries[path.encode()] = (old[0], bytes.fromhex(_object_sha("blob", text.encode())))
        # git orders a tree's entries by name, a subtree's name compared as if it ended in "/"
        order = sorted(entries, key=lambda name: name + b"/" if entries[name][0] == b"40000" else name)
        body = b"".join(entries[name][0] + b" " + name + b"\0" + entries[name][1] for name in order)
        return _object_sha("tree", body), entries

    @staticmethod
    def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        cache[key] = value
        if len(cache) > LazyCommits.CACHE:
            cache.popitem(last=False)

    # ----------------------------------------------------------------- making

    def commit(self, parent: str, changes: Mapping[str, Any], message: str, when: int | None = None) -> str:
        """A new version: ``parent`` with ``edit`` applied to each path in ``changes``; its sha.

        Raises ``PatchError`` when nothing changes (the parent's sha would come back).
        """
        nested = sorted(path for path in changes if "/" in path)
        if nested:
            raise GitError(f"in-process commits change root-level files only, not {nested[0]}")
        with self._lock:
            texts = {path: self.edit(path, self.text(parent, path), arg) for path, arg in changes.items()}
            if all(texts[path] == self.text(parent, path) for path in texts):
                raise PatchError("the proposal changes nothing")
            tree, entries = self._tree_entries(parent, changes)
            msg = message.encode() if message.endswith("\n") else (message + "\n").encode()
            stamp = int(time.time()) if when is None else int(when)
            sha = _object_sha("commit", _commit_body(tree, parent, stamp, msg))
            if sha not in self._pending:  # the same version twice in one second: one commit
                self._pending[sha] = _Version(parent, dict(changes), tree, msg, stamp)
            self._remember(self._roots, tree, entries)
            for path, text in texts.items():
                self._remember(self._texts, (sha, path), text)
            return sha

    def name(self, sha: str, ref: str) -> None:
        """Give a version a ref (at once when written, else when it is written)."""
        with self._lock:
            if sha in self._pending:
                self._refs[sha] = ref
                return
        update_ref(self.repo, ref, sha)

    # ----------------------------------------------------------------- writing

    def write(self, shas: Iterable[str]) -> None:
        """Write the named unwritten versions and their unwritten ancestors (no-op for others)."""
        with self._lock:
            named = [sha for sha in shas if sha in self._pending]
            if named:
                self._fast_import(_ancestors_first(named, self._pending))

    def close(self, write_all: bool = True) -> None:
        """Write every unwritten version (``write_all``) or leave them; stop reading git calls."""
        with self._lock:
            if write_all and self._pending:
                self._fast_import(_ancestors_first(list(self._pending), self._pending))
            with _REGISTRY_LOCK:
                for key in [k for k, v in _LAZY.items() if v is self]:
                    del _LAZY[key]

    def _fast_import(self, order: list[str]) -> None:
        marks = {sha: i + 1 for i, sha in enumerate(order)}
        chunks: list[bytes] = []
        for sha in order:
            version = self._pending[sha]
            ref = self._refs.get(sha, "refs/labfleet/tmp/lazy")
            ident = f"{_IDENTITY['GIT_COMMITTER_NAME']} <{_IDENTITY['GIT_COMMITTER_EMAIL']}> {version.when} +0000"
            parent = f":{marks[version.parent]}" if version.parent in marks else version.parent
            chunks.append(f"commit {ref}\nmark :{marks[sha]}\nauthor {ident}\ncommitter {ident}\n"
                          f"data {len(version.message)}\n".encode() + version.message + f"from {parent}\n".encode())
            for path in sorted(version.changes):
                data = self.text(sha, path).encode()
                mode = self._root(version.tree, sha)[path.encode()][0].decode()
                chunks.append(f"M {mode} inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
            chunks.append(b"\n")
        chunks.append(b"reset refs/labfleet/tmp/lazy\nfrom 0000000000000000000000000000000000000000\n\n")
        with tempfile.TemporaryDirectory(prefix="labfleet-marks-") as tmp:
            exported = Path(tmp) / "marks"
            proc = subprocess.run(
                [*GIT, "-C", str(self.repo), "fast-import", "--quiet", "--force", f"--export-marks={exported}"],
                input=b"".join(chunks), capture_output=True, env={**os.environ, **_SAFE_ENV},
            )
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
                raise GitError(f"git fast-import: {lines[-1] if lines else f'exit {proc.returncode}'}")
            made = dict(line.split(" ", 1) for line in exported.read_text().split("\n") if line)
        for sha in order:
            got = made.get(f":{marks[sha]}", "").strip()
            if got != sha:
                raise GitError(f"git wrote {got or 'nothing'} for the in-process commit {sha}: hashing disagrees")
            del self._pending[sha]
            self._refs.pop(sha, None)


def _commit_body(tree: str, parent: str, when: int, message: bytes) -> bytes:
    ident = f"{_IDENTITY['GIT_COMMITTER_NAME']} <{_IDENTITY['GIT_COMMITTER_EMAIL']}> {when} +0000"
    return f"tree {tree}\nparent {parent}\nauthor {ident}\ncommitter {ident}\n\n".encode() + message


def _ancestors_first(shas: list[str], pending: Mapping[str, _Version]) -> list[str]:
    """``shas`` with every unwritten parent before its children (each once)."""
    order: list[str] = []
    placed: set[str] = set()
    for sha in shas:
        line = []
        while sha in pending and sha not in placed:
            placed.add(sha)
            line.append(sha)
            sha = pending[sha].parent
        order += line[::-1]
    return order


def resolve_tree(repo: Path, commit: str) -> str:
    return git(repo, "rev-parse", f"{commit}^{{tree}}").strip()
