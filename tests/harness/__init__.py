"""Tests of the harness: one run where it lands (sandbox, integrity, metrics, setup outputs, tinygpt)."""
