"""autoresearch's ``results.tsv``: one line per finished experiment, from the ledger's result rows."""

from __future__ import annotations

import json
from collections.abc import Iterable

from labfleet.ledger.rows import ResultRow

TSV_COLUMNS = ("commit", "{metric}", "memory_gb", "status", "description")


def results_tsv(rows: Iterable[ResultRow], metric: str) -> str:
    """commit, metric, memory_gb, status (keep/discard/crash), description; queued and running ones left out."""
    header = "\t".join(c.format(metric=metric) for c in TSV_COLUMNS)
    lines = [header]
    for row in rows:
        if row.status in ("queued", "running"):
            continue
        kept = row.decision in ("kept", "baseline")
        ok = row.status == "done"
        figures = json.loads(row.figures) if row.figures else {}
        memory_mb = figures.get("peak_memory_mb", figures.get("peak_vram_mb", 0.0))
        memory_gb = float(memory_mb) / 1024 if ok and isinstance(memory_mb, int | float) else 0.0
        value = row.metric if row.metric is not None else row.run_metric
        value = value if ok and value is not None else 0.0
        status = "keep" if kept else ("discard" if ok else "crash")
        description = " ".join(row.description.split())  # one line, no tabs
        lines.append(f"{(row.commit_sha[:10] or '0000000')[:7]}\t{value:.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(lines) + "\n"
