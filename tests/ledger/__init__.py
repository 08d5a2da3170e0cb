"""Tests of the ledger: the contract every ledger keeps."""
