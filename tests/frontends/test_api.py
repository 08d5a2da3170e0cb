"""The verbs module, the executor registry and the session settings' recorded form."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from labfleet import api
from labfleet.errors import ConfigError
from labfleet.executors import EXECUTORS, make_executor
from labfleet.session import FleetSettings, KeepRule, Limits, SessionConfig

# the keys every recorded session's config has had (ledgers written before the split read back)
RECORDED = ["researcher", "workers", "threads", "device", "budget_seconds", "seed", "margin", "keep", "z",
            "noise_repeats", "confirm_repeats", "max_attempts", "lookahead", "max_experiments", "hours", "until",
            "researcher_options", "patience", "max_usd", "serve", "executor", "ray_address", "fleet", "labfleet_spec",
            "price", "hardware", "researcher_calls", "researcher_timeout", "backfill", "provisional"]


def test_the_settings_split_by_concern_and_record_the_same_flat_form():
    config = SessionConfig(workers=3, keep="margin", hours=2.0, fleet="fleet.toml", researcher="waves",
                           researcher_options={"ideas": 2}, seed=5)
    assert config.limits == Limits(hours=2.0)
    assert config.keep_rule == KeepRule(rule="margin")
    assert config.fleet_settings == FleetSettings(workers=3, file="fleet.toml")
    assert config.researcher_settings.name == "waves" and config.researcher_settings.options == {"ideas": 2}
    assert (config.workers, config.keep, config.fleet, config.researcher, config.seed) == (3, "margin", "fleet.toml",
                                                                                         "waves", 5)
    recorded = config.to_json()
    assert list(recorded) == RECORDED
    assert SessionConfig.from_json({**recorded, "from_a_newer_labfleet": 1}) == config
    assert dataclasses.replace(config, workers=8).fleet_settings.workers == 8
    merged = config.with_options({"patience": 4}, {"model": "m"})
    assert merged.limits.patience == 4 and merged.researcher_options == {"ideas": 2, "model": "m"}
    with pytest.raises(TypeError, match="no_such_setting"):
        SessionConfig(no_such_setting=1)
    with pytest.raises(AttributeError):
        config.no_such_setting  # noqa: B018


def test_the_executor_registry_names_its_executors_and_refuses_others(tmp_path):
    assert set(EXECUTORS) == {"local", "ray", "skypilot"}
    with pytest.raises(ConfigError, match="--executor 'nope': use local, ray or skypilot"):
        make_executor(FleetSettings(executor="nope"), tmp_path)
    with pytest.raises(ConfigError, match="needs --fleet"):
        make_executor(FleetSettings(executor="skypilot"), tmp_path)
    local = make_executor(FleetSettings(workers=2, hardware="box", price=1.5), tmp_path)
    try:
        assert [(w.hardware, w.price_per_hour) for w in local.workers()] == [("box", 1.5), ("box", 1.5)]
    finally:
        local.close()


def test_the_verbs_are_one_sorted_surface_and_cheap_to_import():
    assert api.__all__ == sorted(api.__all__)
    assert {"run", "submit", "show", "wait", "promote", "cancel", "status", "results", "best", "export",
            "simulate"} <= set(api.__all__)
    assert all(callable(getattr(api, name)) for name in api.__all__)
    heavy = subprocess.run([sys.executable, "-c", "import sys, labfleet.api, labfleet.cli; print(sorted("
                            "{'labfleet.session', 'labfleet.ledger', 'rich.console', 'sqlite3'} & set(sys.modules)))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "[]"


def test_a_verb_on_a_folder_without_a_ledger_says_so(tmp_path):
    with pytest.raises(Exception, match="no labfleet ledger in"):
        api.status(tmp_path)
