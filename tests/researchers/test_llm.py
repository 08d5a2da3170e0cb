"""The LLM researcher against a local fake of the providers' HTTP APIs (the real SDKs run)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from labfleet import scaffold, workspace
from labfleet.errors import ConfigError
from labfleet.records import Decision, Experiment, Result, Run, RunStatus, SessionState
from labfleet.researchers import make_researcher
from labfleet.researchers.llm import TOOL_NAME, LLMResearcher, check_proposal, price_of
from labfleet.target import Target, load_target, unified_diff
from tests.conftest import run_cli
from tests.fake_llm import FakeLLM, Reply

KEY = "sk-ant-test-SECRET123"
OPENAI_KEY = "sk-openai-test-SECRET456"


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Target:
    folder = tmp_path_factory.mktemp("llm") / "tinygpt"
    scaffold.init_bundled(folder)
    return load_target(folder)


@pytest.fixture
def fake():
    with FakeLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)


def researcher(lab: Target, fake: FakeLLM, provider: str = "anthropic", **options) -> LLMResearcher:
    url = fake.url if provider == "anthropic" else fake.openai_url
    options.setdefault("model", "fake-model")
    r = make_researcher("llm", seed=0, target=lab, provider=provider, base_url=url, **options)
    assert isinstance(r, LLMResearcher)
    return r


def experiment(lab: Target, exp_id: int, parent: int | None = 1, decision: Decision = Decision.DISCARDED,
               tags: dict[str, str] | None = None, patch: str = "", description: str = "", commit: str = "",
               metric: float | None = None) -> Experiment:
    return Experiment(
        id=exp_id, session_id=1, parent_id=parent, commit=commit or workspace.resolve(lab.root), patch=patch,
        description=description or f"experiment {exp_id}", hypothesis="", knobs={}, tags=tags or {}, seed=0,
        budget_seconds=3, decision=decision, created_at=0.0, metric=metric,
    )


def result(exp: Experiment, status: RunStatus = RunStatus.DONE, metric: float | None = None,
           log_path: Path | None = None) -> Result:
    run = Run(id=exp.id, experiment_id=exp.id, attempt=1, status=status, worker="w", hardware="cpu", queued_at=0,
              started_at=0, ended_at=1, metric=metric, figures={}, reason="exit 1" if status != RunStatus.DONE else "",
              run_dir=None, log_path=str(log_path) if log_path else None)
    return Result(exp, run)


def snapshot(lab: Target, history: tuple[Result, ...] = (), noise: dict[str, float] | None = None,
             since_keep: int = 0) -> SessionState:
    """A session whose champion is the baseline (e1) at the target's HEAD."""
    baseline = experiment(lab, 1, parent=None, decision=Decision.BASELINE, description="baseline", metric=2.5)
    return SessionState(
        session_id=1, metric="val_bpb", direction="minimize", knobs=lab.knobs, baseline=baseline, champion=baseline,
        history=(result(baseline, metric=2.5), *history), pending=(), free_workers=2,
        noise={"cpu": 0.0123} if noise is None else noise, since_keep=since_keep,
    )


def edit(description: str, search: str, replace: str, file: str = "train.py") -> dict:
    return {"description": description, "hypothesis": f"because {description}",
            "edits": [{"file": file, "search": search, "replace": replace}]}


LR_UP = edit("LEARNING_RATE 1e-3 -> 3e-3", "LEARNING_RATE = 1e-3", "LEARNING_RATE = 3e-3")
WD_DOWN = edit("WEIGHT_DECAY 0.1 -> 0.05", "WEIGHT_DECAY = 0.1\n", "WEIGHT_DECAY = 0.05\n")
FROZEN = edit("faster evaluation", "EVAL_TOKENS = 65_536", "EVAL_TOKENS = 1024", file="prepare.py")
BROKEN = edit("warmup as a function", "WARMUP_FRACTION = 0.05", "WARMUP_FRACTION = (0.05")
BOOM = "raise RuntimeError(\"boom\")\n"


def as_patch(lab: Target, description: str, old: str, new: str) -> dict:
    """A proposal given as a unified diff (without the `diff --git` line, as models often write it)."""
    text = (lab.root / "train.py").read_text()
    diff = unified_diff("train.py", text, text.replace(old, new, 1)).split("\n", 1)[1]
    return {"description": description, "hypothesis": "h", "patch": diff}


def applies(lab: Target, patch: str) -> bool:
    workspace.commit_patch(lab.root, workspace.resolve(lab.root), patch, "check", lab.spec.editable)
    return True


# --------------------------------------------------------------------------- waves


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_wave_becomes_proposals_with_valid_patches(lab, fake, provider):
    fake.push(Reply([LR_UP, as_patch(lab, "BETA2 0.99 -> 0.95", "BETA2 = 0.99", "BETA2 = 0.95"), WD_DOWN]))
    r = researcher(lab, fake, provider)
    proposals = r.propose(snapshot(lab), 3)
    assert [p.description for p in proposals] == ["LEARNING_RATE 1e-3 -> 3e-3", "BETA2 0.99 -> 0.95",
                                                 "WEIGHT_DECAY 0.1 -> 0.05"]
    assert all(p.parent == 1 and dict(p.tags) == {"llm_call": "1"} and p.hypothesis for p in proposals)
    assert all(applies(lab, p.patch) for p in proposals)
    assert "+LEARNING_RATE = 3e-3" in proposals[0].patch
    (request,) = fake.requests
    if provider == "anthropic":
        assert request.path == "/v1/messages"
        assert request.body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
        assert request.body["tools"][0]["input_schema"]["required"] == ["proposals"]
    else:
        assert request.path == "/v1/chat/completions"
        assert request.body["tool_choice"] == {"type": "function", "function": {"name": TOOL_NAME}}
        assert request.body["tools"][0]["function"]["name"] == TOOL_NAME
    assert request.body["model"] == "fake-model"
    assert r.calls == [{"call": 1, "purpose": "wave of 3", "provider": provider, "model": "fake-model",
                        "input_tokens": 1000, "output_tokens": 200, "usd": 0.0, "seconds": r.calls[0]["seconds"],
                        "ok": True, "error": "", "note": "no price known for fake-model: counted as $0"}]


def test_never_more_than_asked_and_nothing_without_a_champion(lab, fake):
    fake.push(Reply([LR_UP, WD_DOWN]))
    r = researcher(lab, fake)
    assert len(r.propose(snapshot(lab), 1)) == 1
    empty = SessionState(session_id=1, metric="val_bpb", direction="minimize", knobs={}, baseline=None,
                         champion=None, history=(), pending=(), free_workers=1)
    assert r.propose(empty, 2) == []
    assert len(fake.requests) == 1


def test_the_prompt_holds_the_brief_the_code_n_the_noise_and_the_failures(lab, fake, tmp_path):
    log = tmp_path / "run.log"
    log.write_text("step 1 | loss 5.5\nTraceback (most recent call last):\nValueError: shapes do not match\n")
    crashed = experiment(lab, 7, decision=Decision.FAILED, description="bigger heads")
    kept = experiment(lab, 8, decision=Decision.KEPT, description="higher learning rate", metric=2.31)
    state = replace(snapshot(lab, (result(crashed, RunStatus.CRASHED, log_path=log), result(kept, metric=2.31)),
                             since_keep=4),
                    findings=("phase 1, optimizer (e2-e8): 1 keep", "H200 runs 9% more steps than H100 in the same budget"))
    fake.push(Reply([LR_UP]))
    researcher(lab, fake).propose(state, 3)
    prompt = fake.requests[0].prompt
    brief = (lab.root / "program.md").read_text().strip()
    assert brief and brief in prompt
    assert (lab.root / "train.py").read_text().rstrip("\n") in prompt
    assert "Propose 3 experiments (n = 3)" in prompt
    assert "cpu: 0.0123" in prompt
    assert "since the last keep: 4" in prompt
    assert "ValueError: shapes do not match" in prompt and "e7 crashed: bigger heads" in prompt
    assert "e8 2.3100 [kept] higher learning rate" in prompt
    assert "prepare.py" in prompt  # named as frozen
    assert "- phase 1, optimizer (e2-e8): 1 keep" in prompt and "H200 runs 9% more steps" in prompt


# --------------------------------------------------------------------------- checks before a run costs anything


def test_bad_proposals_go_back_once_with_their_errors(lab, fake):
    fixed = edit("smaller eval? no: larger batch", "BATCH_SIZE = 8", "BATCH_SIZE = 16")
    still_broken = edit("warmup as a function", "WARMUP_FRACTION = 0.05", "WARMUP_FRACTION = [0.05")
    fake.push(Reply([LR_UP, FROZEN, BROKEN]), Reply([fixed, still_broken]))
    r = researcher(lab, fake)
    proposals = r.propose(snapshot(lab), 3)
    assert [p.description for p in proposals] == [LR_UP["description"], fixed["description"]]
    assert [dict(p.tags) for p in proposals] == [{"llm_call": "1"}, {"llm_call": "2"}]
    assert all(applies(lab, p.patch) for p in proposals)
    assert len(fake.requests) == 2  # sent back once, never twice
    followup = fake.requests[1]
    assert followup.turns == 3  # the prompt, the model's call, the errors as its result
    feedback = followup.body["messages"][2]["content"][0]
    assert feedback["type"] == "tool_result" and feedback["is_error"] is True
    assert "proposal 2" in feedback["content"] and "prepare.py, which is not editable" in feedback["content"]
    assert "proposal 3" in feedback["content"] and "train.py does not compile" in feedback["content"]
    assert "proposal 1" not in feedback["content"]
    assert [c["purpose"] for c in r.calls] == ["wave of 3", "fix 2 of wave of 3"]


def test_openai_followup_answers_the_tool_call(lab, fake):
    fake.push(Reply([FROZEN]), Reply([LR_UP]))
    proposals = researcher(lab, fake, "openai").propose(snapshot(lab), 1)
    assert [p.description for p in proposals] == [LR_UP["description"]]
    messages = fake.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"]
    assert "not editable" in messages[3]["content"]


def test_every_check(lab):
    files = {"train.py": (lab.root / "train.py").read_text()}
    editable, metric = ["train.py"], "val_bpb"

    def error(raw: dict) -> str:
        with pytest.raises(ValueError) as info:
            check_proposal(raw, files, editable, metric)
        return str(info.value)

    assert "not editable" in error(FROZEN)
    assert "does not compile" in error(BROKEN)
    assert "was not found" in error(edit("x", "LEARNING_RATE = 5", "LEARNING_RATE = 6"))
    assert "occurs" in error(edit("x", "import", "import"))
    assert "leaves every file as it was" in error(edit("x", "N_LAYER = 2", "N_LAYER = 2"))
    assert "naming val_bpb" in error(edit("x", "DROPOUT = 0.0", "DROPOUT = 0.0\nprint('val_bpb: 0.5')"))
    assert "key-shaped" in error(edit("x", "DROPOUT = 0.0", "DROPOUT = 0.0  # sk-live-abcdefghijkl"))
    assert "does not apply" in error({"description": "x", "patch": "--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-nope\n+yes\n"})
    assert "touches prepare.py" in error({"description": "x", "patch": "--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-a\n+b\n"})
    assert "patch (unified diff) or edits" in error({"description": "x"})
    assert "description is required" in error({"edits": LR_UP["edits"]})
    # a model's diff with wrong hunk counts still applies, and comes back canonical
    sloppy = as_patch(lab, "x", "N_LAYER = 2", "N_LAYER = 3")
    sloppy["patch"] = re.sub(r"@@ -(\d+),7 \+(\d+),7 @@", r"@@ -\1,9 +\2,9 @@", sloppy["patch"])
    assert ",9 @@" in sloppy["patch"]
    checked = check_proposal(sloppy, files, editable, metric)
    assert checked.patch.startswith("diff --git a/train.py b/train.py\n") and applies(lab, checked.patch)


# --------------------------------------------------------------------------- provider failures


def test_a_429_is_retried_by_the_sdk(lab, fake):
    fake.push(Reply(status=429), Reply([LR_UP]))
    r = researcher(lab, fake)
    assert len(r.propose(snapshot(lab), 1)) == 1
    assert len(fake.requests) == 2 and r.calls[0]["ok"]


def test_three_500s_then_success(lab, fake):
    fake.push(Reply(status=500), Reply(status=500), Reply(status=500), Reply([LR_UP]))
    r = researcher(lab, fake, "openai")
    assert len(r.propose(snapshot(lab), 1)) == 1
    assert len(fake.requests) == 4 and r.calls[0]["ok"]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_an_outage_pauses_proposing_without_raising(lab, fake, provider):
    r = researcher(lab, fake, provider)  # no scripted replies: the fake answers 500 to everything
    assert r.propose(snapshot(lab), 2) == []
    assert len(fake.requests) == 5  # the first try and 4 SDK retries
    (call,) = r.calls
    assert call["ok"] is False and "500" in call["error"] and call["usd"] == 0
    fake.push(Reply([LR_UP]))  # the provider is back: the next ask works
    assert len(r.propose(snapshot(lab), 2)) == 1


def test_an_answer_without_the_tool_is_a_recorded_error(lab, fake):
    fake.push(Reply(no_tool=True))
    r = researcher(lab, fake)
    assert r.propose(snapshot(lab), 1) == []
    assert "without calling propose_experiments" in r.calls[0]["error"]


# --------------------------------------------------------------------------- repairs


def crash(lab: Target, tmp_path: Path, exp_id: int, tags: dict[str, str], parent: int = 1) -> Result:
    patch = unified_diff("train.py", (lab.root / "train.py").read_text(),
                         (lab.root / "train.py").read_text().replace("step, tokens_seen", BOOM + "step, tokens_seen", 1))
    log = tmp_path / f"e{exp_id}.log"
    log.write_text(f'Traceback (most recent call last):\n  File "train.py", line 140\nRuntimeError: boom {exp_id}\n')
    exp = experiment(lab, exp_id, parent=parent, decision=Decision.FAILED, tags=tags, patch=patch,
                     description=f"crashing idea {exp_id}")
    return result(exp, RunStatus.CRASHED, log_path=log)


def test_a_crash_is_repaired_first_from_its_parent(lab, fake, tmp_path):
    r = researcher(lab, fake)
    crashed = crash(lab, tmp_path, 10, {"llm_call": "1"})
    state = snapshot(lab, (crashed,))
    r.observe(state, crashed)
    fake.push(Reply([WD_DOWN]), Reply([LR_UP]))
    proposals = r.propose(state, 2)
    assert [p.description for p in proposals] == [WD_DOWN["description"], LR_UP["description"]]
    repair = proposals[0]
    assert repair.parent == 1 and dict(repair.tags) == {"repair_of": "10", "llm_call": "1"}
    assert applies(lab, repair.patch)
    prompt = fake.requests[0].prompt
    assert "RuntimeError: boom 10" in prompt and BOOM.strip() in prompt and "Repair a failed experiment" in prompt
    assert "exactly 1 proposal" in prompt
    assert [c["purpose"] for c in r.calls] == ["repair of e10", "wave of 1"]


def test_repairs_are_bounded_per_original_experiment(lab, fake, tmp_path):
    r = researcher(lab, fake, max_repairs=2)
    first = crash(lab, tmp_path, 10, {"llm_call": "1"})
    second = crash(lab, tmp_path, 11, {"repair_of": "10", "llm_call": "2"})
    third = crash(lab, tmp_path, 12, {"repair_of": "11", "llm_call": "3"})
    history: tuple[Result, ...] = ()
    for res in (first, second, third):
        history += (res,)
        state = snapshot(lab, history)
        r.observe(state, res)
        fake.push(Reply([WD_DOWN]))
        proposals = r.propose(state, 1)
        assert len(proposals) == 1
    assert [c["purpose"] for c in r.calls] == ["repair of e10", "repair of e11", "wave of 1"]
    # crashes that are not its own (a knob experiment, a user's submission) are not its to repair
    other = crash(lab, tmp_path, 13, {})
    r.observe(snapshot(lab, (other,)), other)
    fake.push(Reply([WD_DOWN]))
    r.propose(snapshot(lab, (other,)), 1)
    assert r.calls[-1]["purpose"] == "wave of 1"


def test_a_repair_fills_a_single_slot_alone(lab, fake, tmp_path):
    r = researcher(lab, fake)
    crashed = crash(lab, tmp_path, 10, {"llm_call": "1"})
    r.observe(snapshot(lab, (crashed,)), crashed)
    fake.push(Reply([WD_DOWN]))
    assert [dict(p.tags).get("repair_of") for p in r.propose(snapshot(lab, (crashed,)), 1)] == ["10"]
    assert len(fake.requests) == 1


# --------------------------------------------------------------------------- cost


def test_cost_per_call_and_the_cap(lab, fake):
    assert price_of("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price_of("anthropic/claude-opus-4-1") == (15.0, 75.0)
    assert price_of("gpt-4o-mini") == (0.15, 0.6)
    assert price_of("llama-3-70b") is None
    r = researcher(lab, fake, model="claude-sonnet-4-6", max_usd=0.01)
    fake.push(Reply([LR_UP], input_tokens=1000, output_tokens=200), Reply([WD_DOWN], input_tokens=1000, output_tokens=200))
    assert len(r.propose(snapshot(lab), 1)) == 1
    assert r.calls[0]["usd"] == pytest.approx(0.006) and "note" not in r.calls[0]
    drained = r.drain_usage()
    assert [d["call"] for d in drained] == [1] and r.drain_usage() == []
    assert len(r.propose(snapshot(lab), 1)) == 1
    assert r.spent_usd == pytest.approx(0.012)
    assert [d["call"] for d in r.drain_usage()] == [2]
    fake.push(Reply([LR_UP]))
    assert r.propose(snapshot(lab), 1) == []  # over --max-llm-usd: no new call
    assert len(fake.requests) == 2 and len(r.calls) == 2


# --------------------------------------------------------------------------- configuration and secrets


def test_configuration_errors_are_one_line(lab, fake, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ConfigError, match=r"set ANTHROPIC_API_KEY \(or --api-key-env NAME\)$"):
        researcher(lab, fake)
    with pytest.raises(ConfigError, match=r"set MY_LLM_KEY$"):
        researcher(lab, fake, api_key_env="MY_LLM_KEY")
    with pytest.raises(ConfigError, match="--model"):
        make_researcher("llm", target=lab, provider="openai")
    with pytest.raises(ConfigError, match="unknown provider 'gemini'"):
        make_researcher("llm", target=lab, provider="gemini", model="m")
    monkeypatch.setenv("MY_LLM_KEY", "sk-other-SECRET789")
    fake.push(Reply([LR_UP]))
    researcher(lab, fake, api_key_env="MY_LLM_KEY").propose(snapshot(lab), 1)
    assert fake.requests[0].auth == "sk-other-SECRET789"


def test_the_sdks_are_imported_only_when_a_client_is_made():
    code = "import sys, labfleet.researchers; print('anthropic' in sys.modules or 'openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_key_goes_only_into_the_auth_header(lab, fake, tmp_path):
    r = researcher(lab, fake, model="claude-sonnet-4-6")
    # a run that printed its environment: the key must not travel on in a prompt
    leaky = crash(lab, tmp_path, 10, {"llm_call": "1"})
    Path(leaky.run.log_path or "").write_text(f"ANTHROPIC_API_KEY={KEY}\nRuntimeError: boom\n")
    state = snapshot(lab, (leaky,))
    r.observe(state, leaky)
    fake.push(Reply([WD_DOWN]), Reply([LR_UP, FROZEN]), Reply([FROZEN]), Reply(status=429), Reply([BROKEN]))
    proposals = r.propose(state, 3)
    proposals += r.propose(state, 1)
    assert r.propose(state, 1) == []  # the outage: 500s after the script ran out
    assert len(proposals) == 2
    # the client fails with the key in its message: the record says so without it
    class Leaky:
        provider, model = "anthropic", "m"

        def complete(self, *args, **kwargs):
            raise RuntimeError(f"invalid x-api-key {KEY}")

    r.client = Leaky()
    assert r.propose(state, 1) == []
    assert "invalid x-api-key [redacted]" in r.calls[-1]["error"]
    text = json.dumps([[p.description, p.hypothesis, p.patch, dict(p.tags)] for p in proposals]) + json.dumps(r.calls)
    assert "SECRET123" not in text
    assert "[redacted]" in fake.requests[0].prompt and "SECRET123" not in fake.requests[0].prompt
    for request in fake.requests:
        assert "SECRET123" not in request.raw
        holders = {name for name, value in request.headers.items() if "SECRET123" in value}
        assert len(holders) == 1 and holders <= {"x-api-key", "authorization"} and request.auth == KEY
    with pytest.raises(ConfigError) as info:
        researcher(lab, fake, api_key_env="NOT_SET_ANYWHERE")
    assert "SECRET123" not in str(info.value)


# --------------------------------------------------------------------------- end to end


def test_a_session_driven_by_the_model_keeps_a_real_improvement(tmp_path, fake, tinygpt_cache):
    """`labfleet run --researcher llm` on tinygpt: a fixed learning rate is kept, a crash is repaired."""
    folder = tmp_path / "lab"
    scaffold.init_bundled(folder)
    env = {"LABFLEET_CACHE": str(tinygpt_cache), "ANTHROPIC_API_KEY": KEY}
    prepared = run_cli("prepare", "-C", str(folder), env=env)
    assert prepared.returncode == 0, prepared.stderr
    # a baseline that barely learns in 3 s (lr 1e-5), so the model's fix is an improvement far beyond
    # any noise of a 3-second run on a loaded machine (at lr 1e-3 the gain of 3e-3 is ~0.05-0.1: a coin flip)
    train = folder / "train.py"
    train.write_text(train.read_text().replace("LEARNING_RATE = 1e-3", "LEARNING_RATE = 1e-5", 1))
    subprocess.run(["git", "-C", str(folder), "commit", "-qam", "a timid learning rate"], check=True)
    lr_fix = edit("LEARNING_RATE 1e-5 -> 3e-3", "LEARNING_RATE = 1e-5", "LEARNING_RATE = 3e-3")
    boom = edit("WEIGHT_DECAY 0.1 -> 0.05 (with a bug)", "WEIGHT_DECAY = 0.1\n", "WEIGHT_DECAY = 0.05\n")
    boom["edits"].append({"file": "train.py", "search": "step, tokens_seen, training_seconds = 0, 0, 0.0\n",
                          "replace": BOOM + "step, tokens_seen, training_seconds = 0, 0, 0.0\n"})
    waves = []

    def model(request):
        if "Repair a failed experiment" in request.prompt:
            assert "RuntimeError: boom" in request.prompt
            return Reply([WD_DOWN])
        waves.append(request)
        return Reply([lr_fix, boom] if len(waves) == 1 else [])

    fake.responder = model
    proc = run_cli("run", "-C", str(folder), "--researcher", "llm", "--provider", "anthropic", "--model", "fake-model",
                   "--base-url", fake.url, "--workers", "2", "--budget", "3", "--max-experiments", "4",
                   "--keep", "margin", "--noise-repeats", "0", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(run_cli("results", "-C", str(folder), "--all", "--json", env=env).stdout)
    by_desc = {r["description"]: r for r in rows}
    lr = by_desc[lr_fix["description"]]
    assert lr["decision"] == "kept", rows
    assert by_desc[boom["description"]]["status"] == "crashed"
    repair = by_desc[WD_DOWN["description"]]
    assert repair["tags"]["repair_of"] == str(by_desc[boom["description"]]["experiment"])
    assert repair["status"] == "done" and repair["parent"] == by_desc[boom["description"]]["parent"]
    assert all("SECRET123" not in json.dumps(r) for r in rows)
    assert "SECRET123" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- ideas waves, novelty, the hybrid

from labfleet.researchers import ideas as ideas_mod  # noqa: E402
from labfleet.researchers.hybrid import TUNE_TAG, HybridResearcher  # noqa: E402

BETA2 = {**edit("BETA2 0.99 -> 0.95", "BETA2 = 0.99", "BETA2 = 0.95"), "name": "BETA2_95"}
NAMED = [{**LR_UP, "name": "LR_UP"}, {**WD_DOWN, "name": "WD_DOWN"}, BETA2]


def pending_of(lab: Target, proposals, start: int) -> list[Experiment]:
    return [experiment(lab, start + i, parent=p.parent, decision=Decision.PENDING, tags=dict(p.tags), patch=p.patch,
                       description=p.description) for i, p in enumerate(proposals)]


def test_one_call_gives_k_ideas_and_the_system_designs_the_wave(lab, fake):
    fake.push(Reply(NAMED))
    r = researcher(lab, fake, ideas=3)
    first = r.propose(snapshot(lab), 2)
    assert len(fake.requests) == 1 and "Propose 3 ideas (k = 3)" in fake.requests[0].prompt
    assert [p.tags["wave"] for p in first] == ["i1", "i1"] and first[0].tags["design"] == "2^3"
    assert first[0].tags["ideas"] == "LR_UP,WD_DOWN,BETA2_95" and first[0].tags["on"] == "LR_UP"
    pending = pending_of(lab, first, 10)
    fake.push(Reply([]))  # the next call (for the workers the wave cannot fill) has no ideas
    rest = r.propose(replace(snapshot(lab), pending=tuple(pending)), 8)
    assert len(fake.requests) == 1 + 1  # the wave's 5 other cells, then a new call for the free workers
    cells = first + [p for p in rest if p.tags["wave"] == "i1"]
    assert sorted(int(p.tags["cell"]) for p in cells) == list(range(1, 8))  # 7 cells: the centre is e1 itself
    assert all(p.parent == 1 and applies(lab, p.patch) for p in cells)
    both = next(p for p in cells if p.tags["on"] == "LR_UP,WD_DOWN")
    assert "+LEARNING_RATE = 3e-3" in both.patch and "+WEIGHT_DECAY = 0.05" in both.patch

    # a restart: a fresh researcher rebuilds the wave's unplaced cells from the tags, without a model call
    fresh = researcher(lab, fake, ideas=3)
    placed = pending_of(lab, first + cells[2:4], 20)
    again = fresh.propose(replace(snapshot(lab), pending=tuple(placed)), 3)
    assert len(fake.requests) == 2
    assert sorted(p.tags["cell"] for p in again) == sorted({p.tags["cell"] for p in cells} - {p.tags["cell"] for p in placed})[:3]


def test_the_next_prompt_reports_each_idea_s_measured_effect(lab, fake):
    fake.push(Reply(NAMED))
    r = researcher(lab, fake, ideas=3)
    cells = r.propose(snapshot(lab), 7)
    # LR_UP helps by 0.1 everywhere, the others do nothing
    done = tuple(result(e, metric=2.5 - 0.1 * ("LR_UP" in e.tags["on"].split(","))) for e in pending_of(lab, cells, 30))
    fake.push(Reply([]))
    r.propose(snapshot(lab, history=done, noise={"cpu": 0.01}), 2)
    prompt = fake.requests[-1].prompt
    assert "# Ideas tried and their measured effects" in prompt
    assert "wave i1 around e1 (2^3): LR_UP (LEARNING_RATE 1e-3 -> 3e-3)" in prompt
    assert "LR_UP lowers val_bpb by 0.100 ± 0.014 (95% CI): better" in prompt
    assert "best guess (the terms beyond the noise, combined): LR_UP" in prompt


def test_a_repeated_idea_is_sent_back_naming_the_earlier_experiment(lab, fake):
    text = (lab.root / "train.py").read_text()
    tried = unified_diff("train.py", text, text.replace("LEARNING_RATE = 1e-3", "LEARNING_RATE = 0.003"))
    earlier = experiment(lab, 7, patch=tried, description="lr three")
    # the same change respelt: 3e-3 for 0.003, another comment
    respelt = edit("bigger steps", "LEARNING_RATE = 1e-3  # peak AdamW learning rate", "LEARNING_RATE = 3e-3  # faster")
    fake.push(Reply([respelt, WD_DOWN]), Reply([BETA2]))
    r = researcher(lab, fake)
    proposals = r.propose(snapshot(lab, history=(result(earlier, metric=2.4),)), 2)
    assert [p.description for p in proposals] == ["WEIGHT_DECAY 0.1 -> 0.05", "BETA2 0.99 -> 0.95"]
    feedback = fake.requests[1].prompt
    assert "proposal 1 ('bigger steps'): it repeats e7 ('lr three')" in feedback
    # a knob setting already run from the same parent is a repeat too (the external verbs and the hybrid use this)
    memory = ideas_mod.Memory.of(snapshot(lab))
    base = snapshot(lab).baseline
    assert memory.why_repeat(ideas_mod.Proposal(description="x", knobs={}), base) == ""


def hybrid(lab: Target, fake: FakeLLM, **options) -> HybridResearcher:
    r = make_researcher("hybrid", seed=0, target=lab, provider="anthropic", base_url=fake.url, model="fake-model",
                        **options)
    assert isinstance(r, HybridResearcher)
    return r


def with_knobs(lab: Target, exp: Experiment, **values) -> Experiment:
    return replace(exp, knobs={**lab.read_knobs(), **values})


def test_the_hybrid_tunes_around_the_baseline_then_hands_over_to_ideas(lab, fake):
    r = hybrid(lab, fake, tune_experiments=3, ideas=2)
    base_state = snapshot(lab)
    base_state = replace(base_state, baseline=with_knobs(lab, base_state.baseline),
                         champion=with_knobs(lab, base_state.baseline),
                         history=(result(with_knobs(lab, base_state.baseline), metric=2.5),))
    tune = r.propose(base_state, 2)
    assert r.phase == "tune" and not fake.requests
    assert all(p.tags[TUNE_TAG] == "1" and p.parent == 1 and p.knobs and not p.patch for p in tune)
    fake.push(Reply(NAMED[:2]))
    done = tuple(result(with_knobs(lab, experiment(lab, 40 + i, tags=dict(p.tags)), **p.knobs), metric=2.6)
                 for i, p in enumerate(tune))
    mixed = r.propose(replace(base_state, history=base_state.history + done), 3)
    # one tuning experiment left in the budget, the other two workers get the ideas wave
    assert [TUNE_TAG in p.tags for p in mixed] == [True, False, False] and len(fake.requests) == 1
    assert {p.tags["wave"] for p in mixed[1:]} == {"i1"}


def test_the_tuning_budget_counts_proposals_the_session_has_not_recorded_yet(lab, fake):
    # the session commits an answer's proposals one per tick: the next call may see a state without them
    # (measured: 5 tuning experiments for a budget of 4 in bench/vs_optuna.py)
    r = hybrid(lab, fake, tune_experiments=3, ideas=2)
    base = with_knobs(lab, snapshot(lab).baseline)
    state = replace(snapshot(lab), baseline=base, champion=base, history=(result(base, metric=2.5),))
    first = r.propose(state, 2)
    fake.push(Reply(NAMED[:2]))
    second = r.propose(state, 2)  # the same state: the first two are not in the ledger yet
    assert [TUNE_TAG in p.tags for p in first + second] == [True, True, True, False]
    # once recorded they count from the ledger, once: nothing is freed, nothing counted twice
    recorded = replace(state, pending=tuple(pending_of(lab, first + second[:1], 40)))
    assert all(TUNE_TAG not in p.tags for p in r.propose(recorded, 2))


def test_after_a_structural_keep_the_hybrid_re_tunes_around_it_and_a_restart_resumes(lab, fake):
    start = snapshot(lab)
    baseline = with_knobs(lab, start.baseline)
    text = (lab.root / "train.py").read_text()
    idea_patch = unified_diff("train.py", text, text.replace("BETA2 = 0.99", "BETA2 = 0.95"))
    commit = workspace.commit_patch(lab.root, workspace.resolve(lab.root), idea_patch, "idea", lab.spec.editable)
    keep = with_knobs(lab, experiment(lab, 50, decision=Decision.KEPT, tags={"wave": "i1", "on": "BETA2_95"},
                                      patch=idea_patch, commit=commit, metric=2.3))
    # the baseline's own tuning was spent before the keep
    spent = tuple(result(with_knobs(lab, experiment(lab, 41 + i, tags={TUNE_TAG: "1"}), LEARNING_RATE=2e-3 + i * 1e-3),
                         metric=2.6) for i in range(3))
    state = replace(start, baseline=baseline, champion=keep,
                    history=(result(baseline, metric=2.5), *spent, result(keep, metric=2.3)))
    r = hybrid(lab, fake, tune_experiments=3, ideas=2)
    tune = r.propose(state, 2)
    assert r.phase == "tune" and not fake.requests
    assert all(p.tags[TUNE_TAG] == "50" and p.parent == 50 for p in tune)
    # around the keep: each numeric knob within a quarter of its (log) range of the keep's value
    lr = [p.knobs["LEARNING_RATE"] for p in tune if "LEARNING_RATE" in p.knobs]
    assert lr and all(1e-3 / 10 ** 0.75 <= v <= 1e-3 * 10 ** 0.75 for v in lr)

    # a restart after two of its three tuning runs: a fresh hybrid rebuilds the study from the ledger
    ran = tuple(result(with_knobs(lab, experiment(lab, 60 + i, parent=50, tags={TUNE_TAG: "50", "optuna_study": "old",
                                                                                "optuna_trial": str(i)}), **p.knobs),
                       metric=2.25 + 0.01 * i) for i, p in enumerate(tune))
    later = replace(state, history=state.history + ran)
    fresh = hybrid(lab, fake, tune_experiments=3, ideas=2)
    fake.push(Reply(NAMED[:2]))
    out = fresh.propose(later, 3)
    assert [TUNE_TAG in p.tags for p in out] == [True, False, False]
    study = fresh.tuner(keep, later).study
    assert study is not None and len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3  # keep + 2 tuned
    assert "# The current best version (experiment e50" in fake.requests[0].prompt
    assert all(p.parent == 50 for p in out)  # tuning starts from the keep; the ideas from the champion (the keep)


def test_a_fraction_s_best_guess_is_proposed_when_no_cell_ran_it(lab, fake):
    warm = {**edit("WARMUP 0.05 -> 0.1", "WARMUP_FRACTION = 0.05", "WARMUP_FRACTION = 0.1"), "name": "WARM"}
    fake.push(Reply(NAMED + [warm]))
    r = researcher(lab, fake, ideas=4)
    cells = r.propose(snapshot(lab), 7)
    assert {p.tags["design"] for p in cells} == {"2^(4-1)"} and len(cells) == 7
    assert cells[0].tags["generators"] == "WARM=LR_UP×WD_DOWN×BETA2_95"  # every cell has an even number of ideas on

    def y(on: list[str]) -> float:  # LR_UP helps, the others do nothing
        return 2.5 - 0.2 * ("LR_UP" in on)

    done = tuple(result(replace(e, decision=Decision.DISCARDED), metric=y(e.tags["on"].split(",")))
                 for e in pending_of(lab, cells, 70))
    assert not any(e.experiment.tags["on"] == "LR_UP" for e in done)  # no cell ran LR_UP alone
    fake.push(Reply([]))
    [guess] = r.propose(snapshot(lab, history=done, noise={"cpu": 0.01}), 1)
    assert guess.tags == {"best_of_ideas": "i1"} and guess.parent == 1
    assert guess.description == "ideas wave 1 best guess: LR_UP"
    assert "+LEARNING_RATE = 3e-3" in guess.patch and "+WEIGHT_DECAY" not in guess.patch and applies(lab, guess.patch)
    # proposed once: the next call starts a new wave instead
    again = r.propose(replace(snapshot(lab, history=done), pending=tuple(pending_of(lab, [guess], 90))), 1)
    assert all("best_of_ideas" not in p.tags for p in again)


def test_the_hybrid_re_tunes_with_cma_es_from_the_kept_values(lab, fake):
    start = snapshot(lab)
    baseline = with_knobs(lab, start.baseline)
    keep = with_knobs(lab, experiment(lab, 50, decision=Decision.KEPT, tags={"wave": "i1"}, metric=2.3),
                      LEARNING_RATE=0.01)
    spent = tuple(result(with_knobs(lab, experiment(lab, 41 + i, tags={TUNE_TAG: "1"})), metric=2.6) for i in range(2))
    state = replace(start, baseline=baseline, champion=keep,
                    history=(result(baseline, metric=2.5), *spent, result(keep, metric=2.3)))
    r = hybrid(lab, fake, tune_experiments=2, ideas=2, sampler="cmaes")
    tune = r.propose(state, 2)
    assert r.phase == "tune" and [p.tags[TUNE_TAG] for p in tune] == ["50", "50"]
    import optuna

    tuner = r.tuner(keep, state)
    assert isinstance(tuner.study.sampler, optuna.samplers.CmaEsSampler)
    low, high = tuner.knobs["LEARNING_RATE"].low, tuner.knobs["LEARNING_RATE"].high
    assert math.isclose(math.sqrt(low * high), 0.01, rel_tol=1e-3)  # the space is centred on the kept value
    assert all(0.01 / 10 ** 0.75 <= p.knobs["LEARNING_RATE"] <= 0.01 * 10 ** 0.75 for p in tune)
    with pytest.raises(ConfigError, match="unknown sampler 'nelder'"):
        hybrid(lab, fake, sampler="nelder")
