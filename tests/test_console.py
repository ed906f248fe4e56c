"""Output written to a file or a pipe keeps every value of a table (CI logs, `doit > log`)."""

from __future__ import annotations

import io

from rich.table import Table

from cloops.core.console import LOG_WIDTH, make_console


def summary_table() -> Table:
    table = Table(title="Calls this run")
    for col in ("service", "backend", "calls", "cache hits", "retries", "tokens in/out",
                "images", "cost USD", "saved USD"):
        table.add_column(col)
    table.add_row("image", "storyboard", "124", "0", "0", "156,052/19,990", "0", "0.0000",
                  "0.0000")
    return table


def test_a_table_written_to_a_file_is_not_cut_to_80_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    console = make_console(out)
    assert console.width == LOG_WIDTH
    console.print(summary_table())
    text = out.getvalue()
    for value in ("service", "storyboard", "156,052/19,990", "saved USD"):
        assert value in text, text
    assert "…" not in text


def test_columns_still_decides_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console(io.StringIO()).width == 100
