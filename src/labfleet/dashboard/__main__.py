"""``python -m labfleet.dashboard -C DIR [--host H] [--port N] [--token T]``: the dashboard without the CLI.

``labfleet dashboard`` calls the same ``serve``; this entry point exists for tests
and for running the dashboard beside a session without going through typer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labfleet.errors import LabfleetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labfleet.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("-C", "--target", type=Path, default=Path("."), help="target folder (default: here)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs a token)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    parser.add_argument("--token", default=None, help="require this token (default: $LABFLEET_DASHBOARD_TOKEN)")
    args = parser.parse_args(argv)
    from labfleet.dashboard.app import serve

    try:
        serve(args.target, host=args.host, port=args.port, token=args.token)
    except LabfleetError as exc:
        print(f"labfleet dashboard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
