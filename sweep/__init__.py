"""The ``sweep`` CLI, grid composition, Ray launch and the run ledger (issue 4)."""
