"""Tests of the researchers: the built-ins, the LLM researcher (a fake model server), conformance."""
