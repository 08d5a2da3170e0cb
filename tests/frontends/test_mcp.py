"""`labfleet mcp` with the MCP SDK's own client over stdio, against a real daemon and ledger."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import agent_lab as lab
from tests.conftest import run_cli, wait_for

TOOLS = {"submit_experiment", "submit_factorial", "get_effects", "get_status", "get_results", "get_best",
         "show_experiment", "wait_for", "promote", "cancel", "read_file"}


def payload(result) -> object:
    """A tool's return value: structured content (lists come wrapped as {"result": [...]}), else its text."""
    assert not result.is_error, result.content
    data = result.structured_content
    if data is not None:
        return data["result"] if set(data) == {"result"} else data
    return result.content[0].text


async def drive(folder) -> dict:
    params = StdioServerParameters(command=sys.executable, args=["-m", "labfleet", "mcp", "-C", str(folder)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        assert tools == TOOLS
        train = payload(await session.call_tool("read_file", {"path": "train.py"}))
        assert "LEARNING_RATE = 1e-3" in train
        sub = payload(await session.call_tool("submit_experiment", {
            "description": "lr best", "hypothesis": "1e-2 is the optimum", "knobs": {"LEARNING_RATE": 0.01}}))
        assert sub["status"] == "queued"
        bad = await session.call_tool("submit_experiment", {"description": "x", "knobs": {"NOPE": 1}})
        assert bad.is_error and "no such knob" in bad.content[0].text
        [done] = payload(await session.call_tool("wait_for", {"experiments": [sub["experiment"]],
                                                               "timeout_seconds": 120}))
        # a wave of two ideas from the new best: its three cells are queued, the centre is the best itself
        from labfleet.target import unified_diff

        best_train = payload(await session.call_tool("read_file", {"path": "train.py"}))
        factors = {"DEEPER": unified_diff("train.py", best_train, best_train.replace("N_LAYER = 2", "N_LAYER = 3")),
                   "SLOWER": unified_diff("train.py", best_train, best_train.replace("SLEEP = 0.0", "SLEEP = 0.1"))}
        wave = payload(await session.call_tool("submit_factorial", {"factors": factors, "description": "two ideas"}))
        assert wave["design"] == "2^2" and [c["on"] for c in wave["cells"]] == [["DEEPER"], ["SLOWER"],
                                                                              ["DEEPER", "SLOWER"]]
        assert wave["centre"]["experiment"] == sub["experiment"]
        lone = await session.call_tool("submit_factorial", {"factors": {"ONLY": factors["DEEPER"]}})
        assert lone.is_error and "at least two" in lone.content[0].text
        await session.call_tool("wait_for", {"experiments": [c["experiment"] for c in wave["cells"]],
                                             "timeout_seconds": 120})
        effects = payload(await session.call_tool("get_effects", {"wave": wave["wave"]}))
        said = effects["waves"][wave["wave"]]["said"]
        assert any(line.startswith("DEEPER raises val_bpb by 0.01") for line in said), said
        status = payload(await session.call_tool("get_status", {}))
        results = payload(await session.call_tool("get_results", {"last": 10}))
        best = payload(await session.call_tool("get_best", {}))
        shown = payload(await session.call_tool("show_experiment", {"experiment": sub["experiment"]}))
        missing = await session.call_tool("show_experiment", {"experiment": 999})
        assert missing.is_error and "no experiment 999" in missing.content[0].text
        return {"done": done, "status": status, "results": results, "best": best, "shown": shown, "sub": sub}


def test_an_mcp_client_submits_to_the_daemon_and_reads_back_the_best(tmp_path):
    folder = lab(tmp_path)
    assert run_cli("submit", "-C", str(folder), "--set", "N_LAYER=3", "-m", "queued before the daemon").returncode == 0
    daemon = subprocess.Popen([sys.executable, "-m", "labfleet", "serve", "-C", str(folder), "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: json.loads(run_cli("status", "-C", str(folder), "--json").stdout)["daemon"])
        out = asyncio.run(drive(folder))
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(timeout=30)
    assert out["done"]["decision"] == "kept" and out["done"]["metric"] == pytest.approx(1.02)
    assert out["status"]["daemon"] is True
    assert out["best"]["experiment"] == out["sub"]["experiment"] and "LEARNING_RATE = 0.01" in out["best"]["diff"]
    assert out["shown"]["hypothesis"] == "1e-2 is the optimum" and out["shown"]["runs"][0]["status"] == "done"
    assert {r["description"] for r in out["results"]} >= {"lr best", "queued before the daemon"}


async def promote_all(folder, calls: list[int]) -> list:
    params = StdioServerParameters(command=sys.executable, args=["-m", "labfleet", "mcp", "-C", str(folder)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return [await session.call_tool("promote", {"experiment": e}) for e in calls]


def test_mcp_promote_has_the_cli_guards(tmp_path):
    """promote through the MCP client refuses what `labfleet promote` refuses, and reopens a finished session."""
    folder = tmp_path / "plan"
    proc = run_cli("simulate", "--fleet", "H100:2", "--hours", "0.3", "--budget", "60", "--researcher", "waves",
                   "--save", str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(run_cli("results", "-C", str(folder), "--all", "--json").stdout)
    baseline = next(r["experiment"] for r in rows if r["decision"] == "baseline")
    kept = next(r["experiment"] for r in rows if r["decision"] == "kept")
    discarded = next(r["experiment"] for r in rows if r["decision"] == "discarded")
    assert json.loads(run_cli("status", "-C", str(folder), "--json").stdout)["state"] == "finished"
    on_base, on_kept, unknown, first, again = asyncio.run(
        promote_all(folder, [baseline, kept, 99999, discarded, discarded]))
    assert on_base.is_error and "is the baseline" in on_base.content[0].text
    assert on_kept.is_error and "is already kept" in on_kept.content[0].text
    assert unknown.is_error and "no experiment 99999" in unknown.content[0].text
    assert payload(first) == {"experiment": discarded, "queued_runs": 2, "session_running": False, "queued": True}
    assert again.is_error and "still has runs queued or running" in again.content[0].text
    status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
    assert status["runs"]["queued"] == 2 and status["state"] == "stopped"  # `labfleet run` / `serve` resumes it
