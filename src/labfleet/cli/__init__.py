"""The ``labfleet`` command line (``labfleet = "labfleet.cli:main"``): a package, one module per group of verbs."""

from labfleet.cli.app import app, main

__all__ = ["app", "main"]
