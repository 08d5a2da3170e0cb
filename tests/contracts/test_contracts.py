"""The shared vocabulary: the public surface, the exception tree, frozen records, string enums."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import pytest

import labfleet
from labfleet import enums, errors, records


def all_modules() -> list[str]:
    names = ["labfleet"]
    for info in pkgutil.walk_packages(labfleet.__path__, "labfleet."):
        if ".targets." in info.name or info.name.endswith(".__main__"):  # targets' code; entry points run
            continue
        names.append(info.name)
    return names


def drawn_tree() -> dict[str, str | None]:
    """class name -> parent name, read from the drawing in errors.py's docstring."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│ ]*[├└]── )?)([A-Z][A-Za-z]+)\s", line + " ")
        if not match or not line.startswith("    "):
            continue
        column, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_the_public_surface_is_sorted_importable_and_public():
    names = labfleet.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(labfleet, name), name
        assert not name.startswith("_") or name == "__version__", name
    exported = {getattr(labfleet, n) for n in names if n != "__version__"}
    # every exception, enum and record is exported
    for module in (errors, enums):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                assert obj in exported, f"{module.__name__}.{name} is not in labfleet.__all__"
    public_names = {n for n in vars(labfleet) if not n.startswith("_")}
    # nothing public at the top that __all__ does not list, besides the submodules
    modules = {n for n in public_names if inspect.ismodule(getattr(labfleet, n))}
    assert public_names - modules - set(names) == set()


def test_importing_labfleet_stays_light():
    code = ("import sys, labfleet; heavy = {'pydantic', 'numpy', 'torch', 'typer', 'sqlite3'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_drawn_exception_tree_is_the_class_hierarchy():
    drawn = drawn_tree()
    real = {name: obj for name, obj in vars(errors).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__}
    assert set(drawn) == set(real)
    for name, parent in drawn.items():
        bases = [b for b in real[name].__bases__ if b.__module__ == errors.__name__]
        assert [b.__name__ for b in bases] == ([parent] if parent else []), name
    assert issubclass(errors.IdeaError, ValueError)  # as before it joined the tree


def test_every_public_exception_class_lives_in_errors():
    defined_elsewhere = []
    for name in all_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name
                    and name != errors.__name__ and not attr.startswith("_")):
                defined_elsewhere.append(f"{name}.{attr}")
    assert defined_elsewhere == []


def test_the_old_homes_of_exceptions_still_name_them():
    from labfleet import agents, frozen, ledger, session
    from labfleet.executors import base
    from labfleet.researchers import ideas, llm

    assert ledger.SessionLocked is errors.SessionLocked and ledger.LedgerError is errors.LedgerError
    assert frozen.FrozenChanged is errors.FrozenChanged and agents.AgentError is errors.AgentError
    assert session.SessionError is errors.SessionError and base.ExecutorError is errors.ExecutorError
    assert llm.LLMError is errors.LLMError and ideas.IdeaError is errors.IdeaError


def test_records_are_frozen():
    for cls in (records.Proposal, records.Experiment, records.Run, records.Result, records.SessionState,
                records.RunRequest, records.RunResult):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls.__name__  # type: ignore[attr-defined]
    result = records.RunResult(outcome=enums.Outcome.OK, metric=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.metric = 0.5  # type: ignore[misc]
    assert records.RunResult.from_json(result.to_json()) == result


def test_enums_are_their_strings():
    assert enums.Role.VALIDATE == "validate" and f"{enums.Role.VALIDATE}" == "validate"
    assert enums.RunStatus("done") is enums.RunStatus.DONE
    assert enums.SessionStatus.FINISHED == "finished" and enums.VerdictOutcome.UNSURE == "unsure"
    assert {o.value for o in enums.Outcome} - {"ok"} <= {s.value for s in enums.RunStatus}
    from labfleet.harness import Outcome
    from labfleet.records import Decision, RunStatus

    assert Outcome is enums.Outcome and RunStatus is enums.RunStatus and Decision is enums.Decision


def test_researchers_read_the_target_only_through_their_view():
    """No researcher module runs git or opens files itself: ``researchers/view.py`` is the one reader."""
    from pathlib import Path

    import labfleet.researchers as package

    # ideas.py applies patches to file texts in a scratch folder of its own (git apply, no target access)
    scratch_only = {"ideas.py"}
    leaks = []
    for path in sorted(Path(package.__file__).parent.rglob("*.py")):
        if path.name == "view.py":
            continue
        text = path.read_text()
        for reach in ("import subprocess", "labfleet.logs", "from labfleet import logs", "workspace.show_file",
                      "workspace.resolve", "workspace.git(", "read_text(", "open(", ".root"):
            if reach in text and not (path.name in scratch_only and reach in ("import subprocess", "read_text(")):
                leaks.append(f"{path.name}: {reach}")
    assert leaks == []
