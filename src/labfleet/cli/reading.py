"""Reading a session: status, results, best, export, effects, report, dashboard."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from labfleet.cli.app import _open_ledger, _state_dir, app
from labfleet.cli.options import JsonOption, SessionOption, TargetOption
from labfleet.cli.render import _escape, _print_best, _say, console, err_console


@app.command()
def status(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where the session stands: running or not, counts, best so far, what each worker runs."""
    from labfleet import api

    view = api.status(target, session)
    if as_json:
        print(json.dumps(view, indent=2))
        return
    state = view["state"] + (f" (orchestrator pid {view['orchestrator_pid']})" if view["orchestrator_pid"] else "")
    console.print(f"session {view['session']} [bold]{state}[/]  {view['researcher']}, "
                  f"{view['config'].get('workers', 1)} worker(s), {view['elapsed_seconds'] / 60:.1f} min")
    d, r = view["decisions"], view["runs"]
    console.print(f"experiments {view['experiments']}: kept {d.get('kept', 0)}, discarded {d.get('discarded', 0)}, "
                  f"failed {d.get('failed', 0)}, pending {d.get('pending', 0)}  |  runs running {r.get('running', 0)}, "
                  f"queued {r.get('queued', 0)}, lost {r.get('lost', 0)}")
    if view["best"]:
        b = view["best"]
        delta = b["metric"] - view["baseline_metric"] if view["baseline_metric"] is not None else 0.0
        console.print(f"best: e{b['id']} {b['metric']:.6f} ({delta:+.6f} vs baseline) {b['commit_sha'][:10]}  {b['description']}")
    if view["noise"]:
        console.print("noise floor (sd of one run): " + ", ".join(f"{hw} {sd:.4f}" for hw, sd in view["noise"].items()))
    if view["cost_usd"]:
        console.print(f"fleet cost so far: ${view['cost_usd']:.2f}")
    if view["llm"]["calls"]:
        m = view["llm"]
        console.print(f"model calls {m['calls']} ({m['failed']} failed): {m['input_tokens']:,} in / "
                      f"{m['output_tokens']:,} out tokens, ${m['usd']:.2f}")
    for w in view["running"]:
        console.print(f"  {w['worker']}: e{w['experiment']} for {w['seconds']:.0f} s  {w['description']}")
    if view["box"]["warning"]:
        err_console.print(f"[bold red]WARNING[/]: {_escape(view['box']['warning'])}; see `labfleet doctor`")


@app.command()
def results(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    last: Annotated[int, typer.Option(help="Show the most recent N experiments.", min=1)] = 50,
    all_: Annotated[bool, typer.Option("--all", help="Show every experiment.")] = False,
    as_json: JsonOption = False,
    tsv: Annotated[bool, typer.Option("--tsv", help="autoresearch's results.tsv format (every experiment).")] = False,
) -> None:
    """Every experiment with its latest run: status, metric, decision, commit."""
    from labfleet import api

    if tsv:
        sys.stdout.write(api.export(target, session))
        return
    rows = api.results(target, session, None if all_ else last)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for col in ("exp", "commit", "status", "metric", "decision", "worker", "description"):
        table.add_column(col, justify="right" if col in ("exp", "metric") else "left")
    styles = {"kept": "green", "baseline": "bold", "failed": "red"}
    for r in rows:
        metric = f"{r['metric']:.6f}" if r["metric"] is not None else "-"
        if r["uncertainty"] is not None and r["metric"] is not None:
            metric += f" ±{r['uncertainty']:.4f}"
        desc = r["description"] + (f"  ({r['reason']})" if r["reason"] and r["status"] != "done" else "")
        table.add_row(str(r["experiment"]), r["commit"] or "-", r["status"] or "-", metric,
                      Text(r["decision"], style=styles.get(r["decision"], "")), r["worker"] or "-", Text(desc))
    console.print(table)


@app.command()
def best(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    as_json: JsonOption = False,
    holdout: Annotated[bool, typer.Option("--holdout", help="Also show validation against the holdout metric for the lineage (for people: never give it to a researcher).")] = False,
) -> None:
    """The best version found: its metric against the baseline, its commit, and its diff."""
    from labfleet import api
    from labfleet.target import load_target

    if holdout:
        for line in api.holdout(target, session):
            _say(line)
        return
    view = api.best(target, session)
    if as_json:
        print(json.dumps(view, indent=2))
        return
    _print_best(view, load_target(target, check_files=False).spec.metric)


@app.command()
def export(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write; - for stdout.")] = Path("results.tsv"),
    tsv: Annotated[bool, typer.Option("--tsv", help="autoresearch's results.tsv columns (the only format).")] = True,
) -> None:
    """Write autoresearch's results.tsv (commit, metric, memory_gb, status, description)."""
    from labfleet import api

    text = api.export(target, session)
    if str(output) == "-":
        sys.stdout.write(text)
        return
    output.write_text(text)
    console.print(f"wrote {output} ({text.count(chr(10)) - 1} experiments)")


@app.command()
def effects(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    wave: Annotated[str | None, typer.Option(help="One wave (its number); default: the latest --last waves.")] = None,
    last: Annotated[int, typer.Option(help="How many of the latest waves to show.", min=1)] = 3,
    as_json: JsonOption = False,
) -> None:
    """Main effects and interactions, with confidence intervals, from factorial waves: knob waves and idea waves."""
    from labfleet import api

    view = api.effects(target, wave, last, session)
    sd, found = view["noise_sd"], view["waves"]
    if as_json:
        print(json.dumps({**view, "waves": {k: {kk: vv for kk, vv in v.items() if kk != "said"}
                                            for k, v in found.items()}}, indent=2))
        return
    if not found:
        _say("no waves with results yet (`labfleet run --researcher waves`, or a wave of ideas: `labfleet submit --factor NAME PATCH ...`)")
        return
    for tag, eff in found.items():
        factors = ", ".join(eff["levels"]) or "-"
        what = "the ideas " if tag.startswith("i") else ""
        _say(f"wave {tag}: {eff['n']} results over {what}{factors}" + (f", noise sd {sd:.4g}" if sd else ""))
        for line in eff["said"]:
            _say(f"  {line}")


@app.command()
def report(
    target: TargetOption = Path("."),
    session: SessionOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to write (default .labfleet/report/s<session>).")] = None,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Also write each chart as a PNG (needs Chromium).")] = True,
) -> None:
    """Draw the session as one self-contained HTML page (the dashboard's, static) and PNGs of its charts."""
    from labfleet.analysis.report import build_report
    from labfleet.target import load_target
    from labfleet.views import _session

    root, ledger = _open_ledger(target)
    loaded = load_target(root, check_files=False)
    sid = _session(ledger, session)["id"]
    out = output or _state_dir(root) / "report" / f"s{sid}"
    groups = {name: knob.group for name, knob in loaded.knobs.items() if knob.group}
    holdout_findings: list[str] = []
    if loaded.config.holdout is not None:
        from labfleet import integrity

        spec = loaded.config.holdout
        view = integrity.lineage_holdout(ledger, sid, spec.direction or loaded.spec.direction)
        holdout_findings = integrity.holdout_lines(view, loaded.spec.metric, spec.metric)
    page = build_report(ledger, sid, out, metric=loaded.spec.metric, direction=loaded.spec.direction,
                        groups=groups, title=f"{loaded.spec.name}, session {sid}", holdout=holdout_findings, png=png)
    pictures = sorted(p.name for p in out.glob("*.png"))
    if pictures:
        _say(f"wrote {page} ({', '.join(pictures)})")
    elif png:
        _say(f"wrote {page} (no PNGs: no Chromium found; install Debian's `chromium` or set $LABFLEET_CHROMIUM)")
    else:
        _say(f"wrote {page}")


@app.command()
def dashboard(
    target: TargetOption = Path("."),
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8765,
    token: Annotated[str | None, typer.Option(help="Require this token on every request (default: $LABFLEET_DASHBOARD_TOKEN).")] = None,
) -> None:
    """A live web page over the ledger: headline, progress, worker timeline, experiments, analysis.

    Read-only; updates within a couple of seconds of the ledger changing (the
    session runs in another process). Open http://127.0.0.1:8765/ (with
    ?token=... when a token is set).
    """
    from labfleet.dashboard.app import serve as serve_dashboard

    serve_dashboard(target, host=host, port=port, token=token)
