"""Planning a fleet: `labfleet simulate` and `labfleet fleet check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from labfleet.cli.app import app
from labfleet.cli.options import JsonOption
from labfleet.cli.render import _say


@app.command()
def simulate(
    target: Annotated[Path | None, typer.Option("--target", "-C", help="Target folder (default: this folder if it has labfleet.toml, else the bundled tinygpt).")] = None,
    fleet: Annotated[str, typer.Option(help="Workers as CLASS:COUNT or CLASS:COUNT@PRICE_PER_HOUR, comma-separated, e.g. H100:13,H200:3.")] = "H100:13,H200:3",
    hours: Annotated[float, typer.Option(help="Virtual hours to simulate.", min=0.01)] = 8.0,
    researcher: Annotated[str, typer.Option(help="waves, greedy, random, grid or optuna.")] = "waves",
    budget: Annotated[float | None, typer.Option(help="Training budget per run in seconds (default: the target's).", min=1)] = None,
    screen: Annotated[str | None, typer.Option(help="Hardware classes that screen, e.g. H100 (sets the tiers).")] = None,
    validate: Annotated[str | None, typer.Option(help="Hardware classes that validate winners, e.g. H200 (sets the tiers).")] = None,
    noise: Annotated[float, typer.Option(help="Seed-to-seed sd of the metric in the surrogate.", min=0)] = 0.002,
    crash_rate: Annotated[float, typer.Option(help="Share of runs that crash.", min=0, max=1)] = 0.02,
    hang_rate: Annotated[float, typer.Option(help="Share of runs that hang until the hard timeout.", min=0, max=1)] = 0.005,
    setup_seconds: Annotated[float, typer.Option(help="Setup once per worker (data, compile cache).", min=0)] = 180.0,
    seed: Annotated[int, typer.Option(help="Seed of the surrogate, the runs and the researcher.")] = 0,
    until: Annotated[float | None, typer.Option(help="Stop once the best metric reaches this value.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many experiments without a keep.", min=1)] = None,
    max_usd: Annotated[float | None, typer.Option("--max-usd", help="Stop once the fleet has cost this much.", min=0)] = None,
    save: Annotated[Path | None, typer.Option(help="Keep the simulated target and its ledger here (for `labfleet report -C DIR`).")] = None,
    researcher_latency: Annotated[str | None, typer.Option("--researcher-latency", help="Virtual seconds per researcher call: SECONDS or MEAN:SD (e.g. 90 or 60:30); each call is also priced as a long-prompt model call.")] = None,
    surrogate: Annotated[str, typer.Option(help="hand-made (a seeded bowl) or measured (fitted to real tinygpt runs on CPU shipped with labfleet; needs the plan extra).")] = "hand-made",
    from_ledger: Annotated[Path | None, typer.Option("--from-ledger", metavar="PATH", help="Fit the surrogate to the runs in this ledger (a ledger.sqlite or a target folder; needs the plan extra).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Plan a fleet before paying for it: a whole session on a virtual clock, in seconds.

    The real scheduler, ledger and researcher run on a throw-away clone of the target;
    training is replaced by a surrogate objective of the knobs (a smooth bowl with
    interactions, seed noise, per-class speed: an H200 runs 9% more steps than an
    H100; crashes, hangs, setup). Prints experiments, utilization, time to reach the
    best, and cost. With --from-ledger or --surrogate measured the objective is
    fitted to real runs instead (see the README's planning section): it prints how
    well the fit predicts runs it did not see, and says when the plan went outside
    the measured region.
    """
    from labfleet import api

    sim = api.simulate(
        target, fleet=fleet, hours=hours, researcher=researcher, budget=budget,
        screen=[c.strip() for c in (screen or "").split(",") if c.strip()],
        validate=[c.strip() for c in (validate or "").split(",") if c.strip()], surrogate=surrogate, noise=noise,
        crash_rate=crash_rate, hang_rate=hang_rate, setup_seconds=setup_seconds, seed=seed, until=until,
        patience=patience, max_usd=max_usd, save=save, researcher_latency=researcher_latency, from_ledger=from_ledger,
    )
    gain = sim.baseline - sim.best
    reach = {f"{f:.0%}": sim.time_to(sim.baseline - f * gain) for f in (0.5, 0.9, 1.0)} if gain > 0 else {}
    fitted_lines = sim.model.describe() if sim.model is not None and hasattr(sim.model, "describe") else []
    model_warnings = sim.model.warnings() if sim.model is not None and hasattr(sim.model, "warnings") else []
    holdout = getattr(sim.model, "holdout", None)
    if as_json:
        print(json.dumps({
            "fleet": sim.fleet, "workers": sim.workers, "researcher": sim.researcher, "hours": sim.hours,
            "experiments": sim.experiments, "experiments_per_hour": sim.experiments_per_hour, "runs": sim.runs,
            "decisions": sim.decisions, "utilization": sim.utilization, "baseline": sim.baseline, "best": sim.best,
            "hours_to_share_of_gain": reach, "cost_usd": sim.cost_usd, "cost_by_class": sim.cost_by_class,
            "findings": sim.findings, "stop_reason": sim.stop_reason, "saved": str(save) if save else None,
            "researcher_latency": list(sim.researcher_latency), "llm_calls": sim.llm_calls, "llm_usd": sim.llm_usd,
            "calls_per_experiment": sim.calls_per_experiment,
            "surrogate": sim.model.source if sim.model is not None else None,
            "holdout": None if holdout is None else {k: getattr(holdout, k) for k in ("runs", "configs", "mae", "rmse", "noise_sd", "r2")},
            "warnings": model_warnings,
        }, indent=2))
        return
    for line in fitted_lines or [f"surrogate: {sim.model.source}" if sim.model is not None else ""]:
        _say(line)
    d = sim.decisions
    _say(f"simulated {sim.hours:.1f} h on {sim.workers} workers ({sim.fleet}), {sim.researcher} researcher, seed {seed}"
         f"; stopped: {sim.stop_reason}")
    _say(f"experiments {sim.experiments} ({sim.experiments_per_hour:.0f}/h): kept {d.get('kept', 0)}, "
                  f"discarded {d.get('discarded', 0)}, failed {d.get('failed', 0)}; runs {sim.runs}")
    _say(f"utilization {sim.utilization:.1%} of worker time running experiments")
    _say(f"best {sim.best:.4f} from baseline {sim.baseline:.4f} ({-gain / sim.baseline:+.2%})")
    if reach:
        _say("time to reach: " + ", ".join(
            f"{k} of the gain {v:.1f} h" if v is not None else f"{k} never" for k, v in reach.items()))
    _say(f"cost ${sim.cost_usd:,.0f} (" + ", ".join(f"{hw} ${usd:,.0f}" for hw, usd in sim.cost_by_class.items()) + ")")
    if sim.llm_calls:
        mean, sd = sim.researcher_latency
        _say(f"researcher: {sim.llm_calls} model calls ({sim.calls_per_experiment:.2f} per experiment) at "
             f"{mean:g}{f'±{sd:g}' if sd else ''} s each, LLM ${sim.llm_usd:,.2f}")
    for line in sim.findings:
        _say(f"  {line}")
    for line in model_warnings:
        _say(f"warning: {line}")
    if save:
        _say(f"saved to {save}: `labfleet report -C {save}` draws it")


fleet_app = typer.Typer(help="SkyPilot fleets: check a fleet.toml before launching it.", no_args_is_help=True)

app.add_typer(fleet_app, name="fleet")


@fleet_app.command("check")
def fleet_check(
    path: Annotated[Path, typer.Argument(help="The fleet file.")] = Path("fleet.toml"),
    as_json: JsonOption = False,
) -> None:
    """Validate a fleet.toml and print what it would launch and what it costs per hour."""
    from labfleet.fleet import load_fleet

    fleet = load_fleet(path)
    if as_json:
        print(json.dumps({"workers": len(fleet.workers()), "usd_per_hour": fleet.cost_per_hour(),
                          "plan": fleet.describe()}, indent=2))
        return
    for line in fleet.describe():
        _say(line)
