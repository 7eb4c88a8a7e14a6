"""The run store's sample rows: each value in its column's format, a missing one left empty."""

from __future__ import annotations

from stackcycler.store import SAMPLES_FILE, Column, RunStore

COLUMNS = [Column("Record Index / 1", "%d"), Column("Step Type", "%s"), Column("Voltage / V", "%.5f"),
           Column("Pressure / MPa", "%.4f")]


def rows_of(tmp_path, *rows) -> list[str]:
    store = RunStore.create(tmp_path, COLUMNS, {}, protocol_text="", bench_text="")
    for row in rows:
        store.append_sample(row)
    store.close()
    return (tmp_path / SAMPLES_FILE).read_text().splitlines()[1:]


def test_each_value_is_written_in_its_columns_format(tmp_path):
    assert rows_of(tmp_path, [7, "cccv", 95.123456789, 5.5]) == ["7,cccv,95.12346,5.5000"]


def test_a_missing_reading_leaves_its_cell_empty(tmp_path):
    assert rows_of(tmp_path, [8, "rest", 80.0, None]) == ["8,rest,80.00000,"]
