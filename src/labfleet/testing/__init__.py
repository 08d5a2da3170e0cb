"""What tests of labfleet (and of plug-ins written for it) build on; shipped with the package.

    targets      the fixture target: a tiny real git repo, signed metric, knobs (no torch)
    snapshots    hand-made ledger snapshots: experiments, results, a SessionState
    scripted     ScriptedResearcher: proposes a fixed list, records what it observed
    conformance  the researcher conformance suite every researcher passes
    ledger       the ledger contract: what any ledger must keep across a reopen

The executor conformance suite lives beside its contract (``executors.conformance``).
Nothing here is imported by labfleet itself.
"""
