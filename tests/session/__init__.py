"""Tests of the session loop: real processes, real git, a real ledger."""
