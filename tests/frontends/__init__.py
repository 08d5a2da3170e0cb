"""Tests of the front ends: the CLI, external agents' verbs, MCP, the dashboard."""
