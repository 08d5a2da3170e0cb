"""Setup outputs: what a target's setup leaves behind, captured once per host and given to every run.

Targets write their data where their authors put it: nanoGPT's
``data/shakespeare_char/prepare.py`` writes ``train.bin``, ``val.bin`` and
``meta.pkl`` beside itself; tinygpt writes into ``$LABFLEET_CACHE_DIR``. The
harness runs ``setup`` once per host and cache key (see ``harness.ensure_setup``)
in a scratch copy of the version inside the cache dir; then:

- **capture**: every file the setup created or changed in that tree (untracked,
  gitignored, or a changed tracked file that is neither editable nor frozen) is
  moved (a rename, never a copy) to ``<cache>/.tree/<same relative path>``; the
  files it wrote into ``$LABFLEET_CACHE_DIR`` stay there. All of them are made
  read-only and hashed (sha256, size) into the setup marker, ``setup-done.json``.
- **verify** (before every run): each recorded file must still have its recorded
  hash. A full hash is skipped while the file's (inode, size, mtime, ctime) is the
  one its last full hash was taken at: any write to a file changes its ctime, and
  no unprivileged process can set a ctime back. A mismatch (or a file gone) is
  reported; the harness then clears the cache and runs setup again, with a log line.
- **place**: the run's snapshot gets, at the same relative path, a symlink to each
  captured file (directories are real, so the run can add files beside them).
  Nothing is copied, whatever the size.
- **check** (after every run): every placed link must still be the same link, and
  every recorded file must still hash as recorded; otherwise the run is rejected
  (it, or something beside it, changed the data it was measured on).

Why symlinks into a read-only cache, not hard links or copies: a copy costs the
data's size per run (nanoGPT's openwebtext is 17 GB); a hard link shares the inode,
so a run that opens it for writing corrupts the cache, and creating a link changes
the inode's ctime, which would defeat the cheap stat check above. A symlink
changes nothing on the cached file; ``open(path, "w")`` through it fails on the
read-only file for an unprivileged user, and whatever gets through (root, or a
``chmod``) is caught by the hashes before the next run and after this one. An OS
sandbox that mounts the cache read-only makes the write itself fail; it must keep
the cache visible (the links point into it). Copy-on-write clones would give each
run a private copy at no cost, but only some file systems (btrfs, XFS) have them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TREE_DIR = ".tree"  # captured outputs of the target folder, at their relative paths
WORK_DIR = ".setup-work"  # the scratch copy setup runs in
# the cache dir's own files, never taken for a target's outputs
OWN_NAMES = {TREE_DIR, WORK_DIR, "setup-done.json", "setup.lock", "setup.log"}
_SKIP_DIRS = {"__pycache__", ".git"}
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(path: Path) -> list[int]:
    st = path.lstat()
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def walk(root: Path) -> Iterable[tuple[str, Path]]:
    """(relative posix path, path) of every file or symlink under ``root``, and every empty dir."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            yield path.relative_to(root).as_posix(), path
        if not filenames and not dirnames and base != root:
            yield base.relative_to(root).as_posix() + "/", base


def stat_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """What a tree holds before setup: relative path -> (inode, size, mtime)."""
    out = {}
    for rel, path in walk(root):
        st = path.lstat()
        out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@dataclass(frozen=True)
class Outputs:
    """The recorded outputs of one setup (the marker's ``outputs`` entry).

    ``files``: path relative to the cache dir -> {"sha256", "size", "stat"} for files,
    {"symlink": target} for links; tree outputs are the ones under ``.tree/``.
    ``dirs``: empty directories the setup created in the target folder.
    """

    files: dict[str, dict[str, Any]]
    dirs: list[str]

    def tree_files(self) -> list[str]:
        """Relative paths (in the target folder) of the captured tree outputs."""
        prefix = TREE_DIR + "/"
        return [k[len(prefix):] for k in self.files if k.startswith(prefix)]

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "dirs": self.dirs}

    @classmethod
    def from_json(cls, data: Any) -> Outputs | None:
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return None
        return cls(files=data["files"], dirs=list(data.get("dirs", [])))


def _entry(path: Path) -> dict[str, Any]:
    if path.is_symlink():
        return {"symlink": os.readlink(path)}
    return {"sha256": sha256_file(path), "size": path.stat().st_size, "stat": _signature(path)}


def _read_only(path: Path) -> None:
    if path.is_symlink():
        return
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def capture(
    work: Path, before: dict[str, tuple[int, int, int]], original_hash: Any, cache_dir: Path, keep: set[str]
) -> Outputs:
    """Move what the setup created or changed in ``work`` into the cache, and record all outputs.

    ``before`` is ``stat_tree(work)`` taken before the setup ran; ``original_hash(rel)``
    gives a tracked file's committed sha256, to tell a touched file from a changed one.
    Files in ``keep`` (editable, frozen, labfleet.toml) must come out unchanged:
    ``ValueError`` names the first one the setup changed.
    """
    tree = cache_dir / TREE_DIR
    dirs: list[str] = []
    moved: list[str] = []
    for rel, path in list(walk(work)):
        if rel.endswith("/"):
            if rel not in before:
                dirs.append(rel.rstrip("/"))
            continue
        if rel in before:
            st = path.lstat()
            if (st.st_ino, st.st_size, st.st_mtime_ns) == before[rel]:
                continue
            if not path.is_symlink() and path.is_file() and sha256_file(path) == original_hash(rel):
                continue
            if rel in keep:
                raise ValueError(f"setup changed {rel}, which must stay as committed")
        moved.append(rel)
    for rel in moved:
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / rel, dest)
    files: dict[str, dict[str, Any]] = {}
    for rel, path in walk(cache_dir):
        top = rel.split("/", 1)[0]
        if rel.endswith("/") or (top in OWN_NAMES and top != TREE_DIR):
            continue
        _read_only(path)
        files[rel] = _entry(path)
    return Outputs(files=files, dirs=sorted(dirs))


def verify(
    cache_dir: Path, outputs: Outputs, changed: str = "changed since setup"
) -> tuple[str, dict[str, list[int]]]:
    """('' or the first problem, refreshed stat signatures) for the recorded outputs.

    A file whose stat changed is hashed again; if its content is intact, its new
    signature is returned so the marker can skip the hash next time.
    """
    refreshed: dict[str, list[int]] = {}
    for rel, entry in outputs.files.items():
        path = cache_dir / rel
        shown = rel.removeprefix(TREE_DIR + "/")
        if "symlink" in entry:
            if not path.is_symlink() or os.readlink(path) != entry["symlink"]:
                return f"setup output {shown} {changed}", refreshed
            continue
        try:
            signature = _signature(path)
        except FileNotFoundError:
            return f"setup output {shown} is missing", refreshed
        if signature == entry.get("stat"):
            continue
        if path.is_symlink() or not path.is_file() or sha256_file(path) != entry["sha256"]:
            return f"setup output {shown} {changed}", refreshed
        refreshed[rel] = signature
    return "", refreshed


def place(source: Path, cache_dir: Path, outputs: Outputs) -> None:
    """Put the captured tree outputs into a run's snapshot: real dirs, symlinks to the files."""
    tree = (cache_dir / TREE_DIR).resolve()
    for rel in outputs.dirs:
        (source / rel).mkdir(parents=True, exist_ok=True)
    for rel in outputs.tree_files():
        dest = source / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.is_file():  # a tracked file the setup changed
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        entry = outputs.files[f"{TREE_DIR}/{rel}"]
        dest.symlink_to(entry["symlink"] if "symlink" in entry else tree / rel)


def check(source: Path, cache_dir: Path, outputs: Outputs) -> str:
    """After a run: '' if its setup outputs are as placed and intact, else the first change."""
    tree = (cache_dir / TREE_DIR).resolve()
    for rel in outputs.tree_files():
        dest = source / rel
        entry = outputs.files[f"{TREE_DIR}/{rel}"]
        expected = entry["symlink"] if "symlink" in entry else str(tree / rel)
        if not dest.is_symlink() or os.readlink(dest) != expected:
            return f"setup output {rel} was replaced or removed during the run"
    return verify(cache_dir, outputs, "was modified during the run")[0]


def clear(cache_dir: Path) -> None:
    """Remove everything a setup left in ``cache_dir`` (outputs and marker), keeping the lock."""
    for entry in cache_dir.iterdir():
        if entry.name == "setup.lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()


def remove_tree(path: Path) -> None:
    """``rm -rf`` that also works when a setup left read-only folders behind."""
    path.chmod(path.stat().st_mode | stat.S_IRWXU)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            sub = Path(dirpath) / name
            if not sub.is_symlink():
                sub.chmod(sub.stat().st_mode | stat.S_IRWXU)
    shutil.rmtree(path)


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
