"""Every executor passes the conformance suite shipped in labfleet.executors.conformance."""

from __future__ import annotations

import pytest

from labfleet.executors import conformance
from labfleet.executors.base import ExecutorError
from labfleet.executors.local import LocalExecutor


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_local_executor_conformance(check, tmp_path):
    check(lambda workers: LocalExecutor(workers), tmp_path)


def test_local_workers_get_their_own_device_or_threads():
    cpu = LocalExecutor(2, threads=3).workers()
    assert [(w.id, w.hardware, w.device, w.threads) for w in cpu] == [("local-0", "cpu", "cpu", 3), ("local-1", "cpu", "cpu", 3)]
    gpu = LocalExecutor(2, devices=["cuda:0", "cuda:1"]).workers()
    assert [w.device for w in gpu] == ["cuda:0", "cuda:1"]
    with pytest.raises(ExecutorError, match="2 workers need 2 devices"):
        LocalExecutor(2, devices=["cuda:0"])
