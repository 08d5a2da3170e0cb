"""Setup outputs written inside the target folder reach every run, intact, on every executor.

The fixture is shaped like nanoGPT (tests/nanolike.py): its setup writes train.bin,
val.bin and meta.json beside itself into a gitignored data/ folder, and its train.py
reads them relative to the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labfleet import harness, sandbox, workspace
from labfleet.executors import conformance
from labfleet.executors.base import Job
from labfleet.harness import Outcome, RunRequest, run_experiment
from labfleet.setup_outputs import TREE_DIR
from labfleet.target import unified_diff
from tests.conftest import make_target
from tests.nanolike import MODEL, TOML, make_nanolike, val_loss

OUTPUTS = ["data/toy/meta.json", "data/toy/train.bin", "data/toy/val.bin"]


@pytest.fixture
def nano(tmp_path: Path) -> Path:
    return make_nanolike(tmp_path / "nano")


def run(folder: Path, tmp_path: Path, name: str, **kwargs) -> harness.RunResult:
    return run_experiment(RunRequest(folder, tmp_path / "runs" / name, **kwargs))


def cache_of(result: harness.RunResult, cache_root: Path) -> Path:
    (cache,) = [p for p in cache_root.iterdir() if p.name.startswith("nanolike-")]
    return cache


def setups(cache: Path) -> int:
    return (cache / "setups.txt").read_text().count("setup")


def model_patch(folder: Path, body: str) -> str:
    return unified_diff("model.py", MODEL, MODEL.replace("    return 0.0\n", body))


def test_setup_outputs_reach_every_run_as_links_into_the_read_only_cache(nano, tmp_path, _isolated_cache):
    first = run(nano, tmp_path, "a")
    assert first.outcome == Outcome.OK, (first.reason, first.log_tail)
    assert first.metric == pytest.approx(val_loss())
    assert not first.setup_cached
    second = run(nano, tmp_path, "b", seed=1)
    assert second.outcome == Outcome.OK and second.setup_cached
    assert second.metric == first.metric
    cache = cache_of(second, _isolated_cache)
    assert setups(cache) == 1  # once per host and cache key

    marker = json.loads((cache / harness.SETUP_DONE).read_text())
    files = marker["outputs"]["files"]
    assert sorted(k.removeprefix(TREE_DIR + "/") for k in files if k.startswith(TREE_DIR)) == OUTPUTS
    assert "setups.txt" in files  # what the setup wrote into $LABFLEET_CACHE_DIR is recorded too
    for rel in OUTPUTS:
        cached = cache / TREE_DIR / rel
        entry = files[f"{TREE_DIR}/{rel}"]
        assert entry["size"] == cached.stat().st_size and len(entry["sha256"]) == 64
        assert not cached.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only
        for name in ("a", "b"):  # each run: a link at the same path, no copy of the data
            placed = tmp_path / "runs" / name / "src" / rel
            assert placed.is_symlink() and placed.resolve() == cached.resolve()
    # the data never entered the target repo, and the setup's scratch copy is gone
    assert workspace.dirty_files(nano) == [] and not (nano / "data/toy/train.bin").exists()
    assert not (cache / ".setup-work").exists()


FORGE_VAL = (  # editable code overwrites the validation data through its snapshot's path, as
    # root (the read-only mode does not stop root), to make its own evaluation easy
    "    import os\n"
    "    path = 'data/toy/val.bin'\n"
    "    os.chmod(os.path.realpath(path), 0o644)\n"
    "    open(path, 'wb').write(b'\\0' * 100)\n"
    "    return 0.0\n"
)


@pytest.mark.skipif(not sandbox.support().boxed, reason=f"no run box here: {sandbox.support().warning}")
def test_in_the_box_a_run_cannot_write_a_setup_output(nano, tmp_path, _isolated_cache):
    bad = run(nano, tmp_path, "bad", patch=model_patch(nano, FORGE_VAL))
    assert bad.outcome == Outcome.CRASHED and "Read-only file system" in bad.log_tail
    cache = cache_of(bad, _isolated_cache)
    honest = run(nano, tmp_path, "honest")  # the cache is untouched: no second setup
    assert honest.outcome == Outcome.OK and honest.metric == pytest.approx(val_loss())
    assert honest.setup_cached and setups(cache) == 1 and not honest.flags


def test_a_run_that_writes_a_setup_output_is_rejected_and_the_next_run_gets_the_data_again(
    nano, tmp_path, _isolated_cache, monkeypatch, request
):
    # the second defence, where no box can be built: the harness's check after the run
    monkeypatch.setenv(sandbox.BOX_ENV, "off")
    sandbox.support.cache_clear()
    request.addfinalizer(sandbox.support.cache_clear)
    bad = run(nano, tmp_path, "bad", patch=model_patch(nano, FORGE_VAL))
    assert bad.outcome == Outcome.REJECTED, (bad.reason, bad.log_tail)
    assert bad.reason == "setup output data/toy/val.bin was modified during the run"
    cache = cache_of(bad, _isolated_cache)
    assert setups(cache) == 1

    honest = run(nano, tmp_path, "honest")
    assert honest.outcome == Outcome.OK and honest.metric == pytest.approx(val_loss())
    assert not honest.setup_cached and setups(cache) == 1  # cleared, then set up again (a fresh count)
    assert honest.flags[-1:] == ["setup output data/toy/val.bin changed since setup: running setup `python data/toy/prepare.py` again"]
    assert (cache / TREE_DIR / "data/toy/val.bin").stat().st_size > 100
    assert (tmp_path / "runs" / "honest" / "run.log").read_text().startswith(f"labfleet: {honest.flags[-1]}\n")


def test_a_run_that_replaces_its_own_copy_of_a_setup_output_is_rejected(nano, tmp_path, _isolated_cache):
    swap = (
        "    import os\n"
        "    open('fake.bin', 'wb').write(b'\\0' * 100)\n"
        "    os.replace('fake.bin', 'data/toy/val.bin')\n"
        "    return 0.0\n"
    )
    bad = run(nano, tmp_path, "bad", patch=model_patch(nano, swap))
    assert bad.outcome == Outcome.REJECTED
    assert bad.reason == "setup output data/toy/val.bin was replaced or removed during the run"
    honest = run(nano, tmp_path, "honest")  # the cache was never touched: no second setup
    assert honest.outcome == Outcome.OK and honest.setup_cached and honest.flags == []
    assert setups(cache_of(honest, _isolated_cache)) == 1


def test_the_marker_never_says_done_while_outputs_are_gone_or_changed(nano, tmp_path, _isolated_cache):
    cache, seconds, cached = harness.prepare(nano)
    assert not cached and seconds > 0
    assert harness.prepare(nano)[2] is True
    (cache / TREE_DIR / "data/toy/train.bin").unlink()
    cache2, _, cached = harness.prepare(nano)
    assert cache2 == cache and not cached and (cache / TREE_DIR / "data/toy/train.bin").is_file()

    # changed behind labfleet's back, mtime restored: the ctime still gives it away
    victim = cache / TREE_DIR / "data/toy/meta.json"
    before = victim.stat()
    victim.chmod(0o644)
    victim.write_text('{"vocab_size": 1}')
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = run(nano, tmp_path, "after-tamper")
    assert result.outcome == Outcome.OK and not result.setup_cached
    assert result.flags[0].startswith("setup output data/toy/meta.json changed since setup: running setup")
    assert json.loads(victim.read_text())["vocab_size"] > 1

    # a touch (new mtime, same bytes) is not a change: hashed once, then remembered
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    again = run(nano, tmp_path, "after-touch")
    assert again.outcome == Outcome.OK and again.setup_cached and again.flags == []
    marker = json.loads((cache / harness.SETUP_DONE).read_text())
    assert marker["outputs"]["files"][f"{TREE_DIR}/data/toy/meta.json"]["stat"][2] == before.st_mtime_ns + 10**9


def test_an_old_marker_without_outputs_is_not_trusted(nano, tmp_path, _isolated_cache):
    cache, _, _ = harness.prepare(nano)
    marker = cache / harness.SETUP_DONE
    marker.write_text(json.dumps({"command": "python data/toy/prepare.py", "seconds": 0.1, "at": 0}))
    result = run(nano, tmp_path, "a")
    assert result.outcome == Outcome.OK and not result.setup_cached
    assert "outputs" in json.loads(marker.read_text())


def test_cache_dir_outputs_are_verified_too(target_factory, tmp_path, _isolated_cache):
    # tinygpt's way: the setup writes into $LABFLEET_CACHE_DIR, the run reads from there
    folder = target_factory()
    first = run_experiment(RunRequest(folder, tmp_path / "r1"))
    assert first.outcome == Outcome.OK and first.figures["data"] == "data"
    (cache,) = [p for p in _isolated_cache.iterdir() if p.is_dir()]
    data = cache / "data.txt"
    data.chmod(0o644)
    data.write_text("poisoned")
    second = run_experiment(RunRequest(folder, tmp_path / "r2"))
    assert second.outcome == Outcome.OK and second.figures["data"] == "data"
    assert second.flags and "setup output data.txt changed since setup" in second.flags[0]


def test_a_setup_that_changes_a_target_file_fails(tmp_path):
    folder = make_nanolike(tmp_path / "nano", toml=TOML.replace(
        'setup = "python data/toy/prepare.py"', 'setup = "python data/toy/prepare.py && echo x >> model.py"'))
    result = run(folder, tmp_path, "a")
    assert result.outcome == Outcome.SETUP_FAILED
    assert result.reason.endswith("setup changed model.py, which must stay as committed")


def test_outputs_the_setup_makes_in_new_folders_and_tracked_files_it_changes(tmp_path, _isolated_cache):
    setup = (
        "import os, pathlib\n"
        "pathlib.Path('cache/tok').mkdir(parents=True)\n"
        "pathlib.Path('cache/tok/vocab.txt').write_text('abc')\n"
        "pathlib.Path('out').mkdir()\n"  # an empty folder the run expects
        "pathlib.Path('notes.txt').write_text('filled in by setup')\n"  # a tracked, non-target file
    )
    train = (
        "import os\n"
        "assert os.path.isdir('out')\n"
        "print('---')\n"
        "print('val_bpb: ' + str(len(open('cache/tok/vocab.txt').read())))\n"
        "print('notes: ' + open('notes.txt').read())\n"
        "open('cache/tok/new.txt', 'w').write('a file of the run')\n"  # beside an output: allowed
    )
    folder = make_target(tmp_path / "t", train, signed=False)
    (folder / "prepare.py").write_text(setup)
    (folder / "notes.txt").write_text("empty")
    workspace.git(folder, "add", "-A")
    workspace.git(folder, "commit", "-q", "-m", "setup writes beside itself")
    for name in ("a", "b"):
        result = run(folder, tmp_path, name)
        assert result.outcome == Outcome.OK, (result.reason, result.log_tail)
        assert result.metric == 3.0 and result.figures["notes"] == "filled in by setup"
    (cache,) = [p for p in _isolated_cache.iterdir() if p.is_dir()]
    assert not (cache / TREE_DIR / "cache/tok/new.txt").exists()  # the run's own file stayed in its run


# --------------------------------------------------------------------------- other executors


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'labfleet[ray]')")
    import ray

    from labfleet.executors.ray import RayExecutor
    from tests.executors.test_ray import RAY_CLI, Cluster

    if not RAY_CLI.exists():
        pytest.skip(f"no ray CLI at {RAY_CLI}")
    root = Path(tempfile.mkdtemp(prefix="lfso", dir="/tmp"))  # short: Ray's socket paths are limited
    cluster = Cluster(root)
    try:
        cluster.start("head", {"H100": 1}, head=True)
        cluster.start("worker", {"H200": 1})
        keeper = RayExecutor(cluster.address)
        yield cluster
        keeper.close()
    finally:
        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_setup_outputs_on_a_two_node_ray_cluster(ray_cluster, tmp_path):
    from labfleet.executors.ray import RayExecutor

    folder = make_nanolike(tmp_path / "nano")
    commit = workspace.resolve(folder)
    executor = RayExecutor(ray_cluster.address, threads=1)  # type: ignore[attr-defined]
    try:
        slots = {w.hardware: w.id for w in executor.workers()}
        jobs = [Job(i + 1, slots[cls], RunRequest(folder, tmp_path / "runs" / f"{cls}-{i}", commit=commit))
                for i, cls in enumerate(("H100", "H200", "H100", "H200"))]
        for job in jobs[:2]:
            executor.start(job)
        finished = conformance._wait(executor, 2, timeout=60)
        for job in jobs[2:]:
            executor.start(job)
        finished += conformance._wait(executor, 2, timeout=60)
    finally:
        executor.close()
    results = {f.run_id: f.result for f in finished}
    for run_id in (1, 2, 3, 4):
        result = results[run_id]
        assert result is not None and result.outcome == Outcome.OK, result
        assert result.metric == pytest.approx(val_loss())
        assert result.setup_cached == (run_id > 2)  # once per node, then reused on that node
    for node in ("head", "worker"):  # each node set up once, into its own cache
        (cache,) = (ray_cluster.root / node / "cache").iterdir()  # type: ignore[attr-defined]
        assert setups(cache) == 1 and (cache / TREE_DIR / "data/toy/val.bin").is_file()


def test_setup_outputs_through_the_skypilot_fake(tmp_path):
    pytest.importorskip("sky", reason="SkyPilot is not installed (pip install 'labfleet[skypilot]')")
    from labfleet.executors.skypilot import SkyPilotExecutor
    from labfleet.fleet import parse_fleet_toml
    from tests.fake_sky import FakeSky

    folder = make_nanolike(tmp_path / "nano")
    commit = workspace.resolve(folder)
    cloud = FakeSky(tmp_path / "cloud", launch_seconds=0.1)
    fleet = parse_fleet_toml('[[pool]]\naccelerators = "H100:1"\ncount = 1\nprice_per_hour = 2.49\n')
    executor = SkyPilotExecutor(fleet, sdk=cloud, labfleet_spec=None, poll_seconds=0.05)
    try:
        (worker,) = executor.workers()
        finished = []
        for run_id in (1, 2):
            executor.start(Job(run_id, worker.id, RunRequest(folder, tmp_path / "runs" / str(run_id), commit=commit)))
            finished += conformance._wait(executor, 1, timeout=120)
    finally:
        executor.close()
        cloud.shutdown()
    for f in finished:
        assert f.result is not None and f.result.outcome == Outcome.OK, (f.reason, f.result)
        assert f.result.metric == pytest.approx(val_loss())
        assert f.result.setup_cached  # the cluster's setup task prepared it once (labfleet prepare)
    caches = list((tmp_path / "cloud").rglob("setups.txt"))
    assert len(caches) == 1 and caches[0].read_text().count("setup") == 1
