"""The SQLite ledger passes the ledger contract shipped in labfleet.testing.ledger."""

from __future__ import annotations

import pytest

from labfleet.ledger import Ledger
from labfleet.testing import ledger as contract


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
def test_ledger_contract(check, tmp_path):
    check(Ledger, tmp_path)


def test_the_contract_catches_a_ledger_that_forgets(tmp_path):
    class Forgetful(Ledger):
        """Counts a result twice: a final run takes a later status."""

        def finish_run(self, run_id, status, **kwargs):
            self.db.execute("UPDATE runs SET status = 'queued' WHERE id = ?", (run_id,))
            return super().finish_run(run_id, status, **kwargs)

    with pytest.raises(AssertionError):
        contract.check_a_final_status_never_changes(Forgetful, tmp_path)
