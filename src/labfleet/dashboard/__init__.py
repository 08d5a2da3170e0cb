"""`labfleet dashboard`: a live, read-only web page over a target's ledger.

A person leaves it open all night: headline numbers, the progress chart, the
worker timeline, every experiment, and the analysis, refreshed within a second or
two of each ledger write (server-sent events). It never writes to the ledger and
only binds a non-loopback address with a token. FastAPI and uvicorn are imported
only when the dashboard is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TOKEN_ENV", "create_app", "serve"]

TOKEN_ENV = "LABFLEET_DASHBOARD_TOKEN"

if TYPE_CHECKING:  # keeps `import labfleet.dashboard` free of FastAPI
    from labfleet.dashboard.app import create_app, serve


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from labfleet.dashboard import app

        return getattr(app, name)
    raise AttributeError(name)
