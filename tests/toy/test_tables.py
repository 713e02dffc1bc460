import pytest

from freeatm_hf.toy.tables import cell, summarize


def test_rows_report_the_mean_and_sample_spread_over_seeds():
    row = summarize("x", [{"map": 0.5, "acc": 0.2}, {"map": 0.7, "acc": 0.2}], ["map", "acc"])
    assert row["map"] == pytest.approx(0.6) and row["map_std"] == pytest.approx(0.1414, abs=1e-4)  # n − 1
    assert cell(row, "map", scale=100) == "60.0 ± 14.1" and cell(row, "acc", scale=100) == "20.0 ± 0.0"
    assert row["seeds"] == 2 and len(row["runs"]) == 2
    one = summarize("y", [{"map": 0.5}], ["map"])
    assert one["map_std"] is None and cell(one, "map", scale=100) == "50.0"
