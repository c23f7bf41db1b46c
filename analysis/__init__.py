"""Calibration, CUSUM, effect sizes, intervals and the report; reads the store only (issue 5)."""
