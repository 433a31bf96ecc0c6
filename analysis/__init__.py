"""Figures and tables from a study's results table (``results.parquet``)."""
from analysis.figures import (acc_vs_temperature, acc_vs_temperature_by_duration, early_vs_final,  # noqa: F401
                              final_test_rows, paired_delta, relational, sorted_softmax)
