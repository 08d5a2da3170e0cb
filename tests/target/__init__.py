"""Tests of targets: labfleet.toml, knobs, metric sources."""
