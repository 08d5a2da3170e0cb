"""What carrying setup outputs costs a run: verify + link + check, against copying them.

A target whose setup writes SIZE MB of data beside itself (in gitignored data/).
For each size: the one-time capture (setup, hash, move), then per run the work
the harness adds (``verify`` before, ``place`` links, ``check`` after), side by
side with what a per-run copy of the same files would cost, and a full re-hash
(what a verification without the stat shortcut would cost).

    .venv/bin/python bench/setup_outputs.py [--sizes 10,100,500] [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labfleet import harness, setup_outputs  # noqa: E402

TOML = """\
[target]
name = "bigdata"
editable = ["train.py"]
frozen = ["prep.py"]
setup = "python prep.py {mb}"
run = "python train.py"
metric = "loss"
budget_seconds = 1
timeout_seconds = 10
"""
PREP = """\
import os, sys
os.makedirs("data", exist_ok=True)
chunk = os.urandom(1 << 20)
with open("data/train.bin", "wb") as f:
    for _ in range(int(sys.argv[1])):
        f.write(chunk)
with open("data/val.bin", "wb") as f:
    f.write(chunk)
"""


def make(folder: Path, mb: int) -> None:
    folder.mkdir(parents=True)
    (folder / "labfleet.toml").write_text(TOML.format(mb=mb))
    (folder / "prep.py").write_text(PREP)
    (folder / "train.py").write_text("print('---')\nprint('loss: 1.0')\n")
    (folder / ".gitignore").write_text("data/\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "bench"]):
        subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def ms(seconds: list[float]) -> str:
    return f"{1000 * statistics.median(seconds):9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500", help="MB of setup output to try")
    parser.add_argument("--runs", type=int, default=5, help="runs per size (median shown)")
    args = parser.parse_args()
    print(f"{'size MB':>8} {'setup s':>8} {'verify ms':>10} {'link ms':>9} {'check ms':>9} "
          f"{'copy ms':>9} {'rehash ms':>10}")
    for mb in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="lf-bench-so-") as tmp:
            root = Path(tmp)
            make(root / "t", mb)
            cache, seconds, _ = harness.prepare(root / "t", cache_root=root / "cache")
            outputs = harness.setup_outputs_of(cache)
            assert outputs is not None
            verify, link, check, copy, rehash = [], [], [], [], []
            for i in range(args.runs):
                src = root / f"run{i}"
                src.mkdir()
                t0 = time.perf_counter()
                problem, _ = setup_outputs.verify(cache, outputs)
                t1 = time.perf_counter()
                setup_outputs.place(src, cache, outputs)
                t2 = time.perf_counter()
                problem = problem or setup_outputs.check(src, cache, outputs)
                t3 = time.perf_counter()
                assert not problem, problem
                shutil.copytree(cache / setup_outputs.TREE_DIR, root / f"copy{i}")
                t4 = time.perf_counter()
                for rel in outputs.files:
                    setup_outputs.sha256_file(cache / rel)
                t5 = time.perf_counter()
                shutil.rmtree(root / f"copy{i}")
                verify.append(t1 - t0)
                link.append(t2 - t1)
                check.append(t3 - t2)
                copy.append(t4 - t3)
                rehash.append(t5 - t4)
            print(f"{mb:>8} {seconds:>8.2f} {ms(verify):>10} {ms(link):>9} {ms(check):>9} "
                  f"{ms(copy):>9} {ms(rehash):>10}")


if __name__ == "__main__":
    main()
