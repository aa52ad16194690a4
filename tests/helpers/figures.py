"""Checks of a figure's files shared by the unit and workflow tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PDF_MAGIC = b"%PDF-"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_figure_files(paths: dict, min_rows: int = 1, min_png: int = 5000) -> pd.DataFrame:
    """PDF and PNG exist, start with their magic bytes and are not trivially small; the CSV has rows."""
    pdf, png, csv = Path(paths["pdf"]), Path(paths["png"]), Path(paths["csv"])
    assert pdf.read_bytes()[:5] == PDF_MAGIC and pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > min_png
    assert not list(pdf.parent.glob(".*.tmp*")), "temporary files left behind"
    data = pd.read_csv(csv)
    assert len(data) >= min_rows
    return data
