"""Tests of the analysis stage: effects, noise, planning surrogates, the report."""
