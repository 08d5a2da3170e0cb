"""The target: init, prepare, baseline, doctor, and its pinned frozen files (`labfleet target ...`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from labfleet.cli.app import _open_ledger, _state_dir, app
from labfleet.cli.options import JsonOption, TargetOption
from labfleet.cli.render import _escape, _print_result, _spinner, console, err_console
from labfleet.errors import LabfleetError


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create.")] = Path("tinygpt"),
    from_autoresearch: Annotated[
        Path | None,
        typer.Option(
            "--from-autoresearch",
            metavar="DIR",
            help="Write a labfleet.toml that runs Karpathy's autoresearch folder DIR unchanged.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing labfleet.toml.")] = False,
) -> None:
    """Create a target: the bundled tinygpt as a new git repo, or wrap an autoresearch folder."""
    from labfleet import scaffold

    if from_autoresearch is not None:
        commit = scaffold.init_from_autoresearch(from_autoresearch, force=force)
        _pin(from_autoresearch)
        console.print(f"wrote {from_autoresearch / 'labfleet.toml'} and committed it ({commit[:8]})")
        console.print(f"next: [bold]cd {from_autoresearch} && labfleet prepare && labfleet baseline[/]")
        return
    commit = scaffold.init_bundled(directory)
    _pin(directory)
    console.print(f"created the tinygpt target in {directory} (git commit {commit[:8]})")
    console.print(f"next: [bold]cd {directory} && labfleet prepare && labfleet baseline[/], "
                  "then [bold]labfleet run --workers 2[/]")


def _pin(folder: Path) -> None:
    """Pin a new target's frozen files (``labfleet target accept-frozen`` changes the pin)."""
    from labfleet import frozen
    from labfleet.target import load_target

    frozen.record(load_target(folder, check_files=False), by="init")


@app.command()
def prepare(target: TargetOption = Path(".")) -> None:
    """Run the target's setup once on this host (data, tokenizer); later runs reuse it."""
    from labfleet import harness
    from labfleet.target import load_target

    load_target(target)
    with _spinner("running setup"):
        cache_dir, seconds, cached = harness.prepare(target.resolve())
    if cached:
        console.print(f"setup already done: {cache_dir}")
    else:
        console.print(f"setup done in {seconds:.1f} s: {cache_dir}")


@app.command()
def baseline(
    target: TargetOption = Path("."),
    seed: Annotated[int, typer.Option(help="Random seed (LABFLEET_SEED).")] = 0,
    budget: Annotated[
        float | None, typer.Option(help="Training budget in seconds (default: the target's).", min=0.1)
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps, or auto.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads for the run.", min=1)] = 1,
    as_json: JsonOption = False,
) -> None:
    """Run the unmodified target (its HEAD commit) through the harness and show the result."""
    from labfleet import harness
    from labfleet.target import load_target

    loaded = load_target(target)
    root = loaded.root
    dirty = loaded.uncommitted()
    if dirty:
        err_console.print(f"[yellow]note:[/] uncommitted changes are not part of the baseline: {', '.join(dirty[:5])}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = loaded.state_dir / "runs" / f"baseline-{stamp}-s{seed}"
    request = harness.RunRequest(
        target_dir=root,
        run_dir=run_dir,
        seed=seed,
        budget_seconds=budget,
        device=_resolve_device(device),
        threads=threads,
    )
    label = f"baseline: budget {budget or loaded.spec.budget_seconds:g} s, seed {seed}, log {run_dir / harness.LOG_FILE}"
    with _spinner(label, quiet=as_json):
        result = harness.run_experiment(request)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_result(result)
    if result.outcome != harness.Outcome.OK:
        raise typer.Exit(1)


def _resolve_device(device: str) -> str:
    from labfleet import devices

    if device == "auto":
        return devices.detect()
    if not devices.is_device(device):
        raise LabfleetError(f"--device {device!r}: use cpu, cuda, cuda:N, mps or auto")
    return device


@app.command()
def doctor(
    target: TargetOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Which protections are active on this machine (the run box, limits, git), and the frozen pin."""
    from labfleet import frozen, sandbox
    from labfleet.target import CONFIG_FILE, load_target

    rows = [{"protection": name, "active": active, "how": how} for name, active, how in sandbox.protections()]
    pin: dict[str, Any] | None = None
    if (target / CONFIG_FILE).is_file():
        loaded = load_target(target, check_files=False)
        current = frozen.pinned(loaded)
        pin = {"target": str(loaded.root), "pinned": current is not None,
               "commit": current["commit"] if current else None,
               "files": sorted(current["hashes"]) if current else list(loaded.spec.frozen)}
    support = sandbox.support()
    if as_json:
        print(json.dumps({"boxed": support.boxed, "detail": support.detail, "protections": rows, "frozen": pin}, indent=2))
        return
    for row in rows:
        mark = "[green]on [/]" if row["active"] else "[bold red]OFF[/]"
        console.print(f"  {mark} {row['protection']}: {_escape(row['how'])}", highlight=False)
    if pin is not None:
        if pin["pinned"]:
            console.print(f"  [green]on [/] frozen files pinned at {pin['commit'][:10]}: {', '.join(pin['files'])}")
        else:
            console.print("  [yellow]not yet[/] frozen files pinned: the first session pins them")
    if not support.boxed:
        err_console.print(f"[bold red]WARNING[/]: {_escape(support.warning)}")


target_app = typer.Typer(help="The target's pinned state.", no_args_is_help=True)

app.add_typer(target_app, name="target")


@target_app.command("accept-frozen")
def accept_frozen(target: TargetOption = Path(".")) -> None:
    """Pin the frozen files as they are at HEAD: after you changed prepare.py (or any frozen file) on purpose."""
    from labfleet import frozen
    from labfleet.target import load_target

    loaded = load_target(target, check_files=False)
    dirty = [p for p in loaded.uncommitted() if p in loaded.spec.frozen]
    if dirty:
        raise LabfleetError(f"frozen file {dirty[0]} has uncommitted changes: commit it first (the pin is of HEAD)")
    from labfleet.ledger import LEDGER_FILE

    ledger = None
    if (_state_dir(loaded.root) / LEDGER_FILE).exists():
        _, ledger = _open_ledger(loaded.root)
    try:
        changed, pin = frozen.accept(loaded, ledger)
    finally:
        if ledger is not None:
            ledger.close()
    what = ", ".join(changed) if changed else "nothing changed"
    console.print(f"frozen files pinned at {pin['commit'][:10]} ({what}); logged in {frozen.pin_path(loaded)}")
