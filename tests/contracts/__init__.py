"""Tests of the shared vocabulary: records, enums, exceptions, the public surface."""
