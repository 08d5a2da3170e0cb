"""Tests of the scheduler: pure decisions over constructed snapshots."""
