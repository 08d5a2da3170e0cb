"""What the ledger says: noise, hardware, effects, phases, cost, and the report."""
