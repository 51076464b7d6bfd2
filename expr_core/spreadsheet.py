"""Cells that spreadsheets read as text: a value starting with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage
return) is a live formula in Excel, LibreOffice and Google Sheets when a CSV is opened ("CSV injection").

Names and file names come from users (the name in the sidebar, an uploaded photo's name); the CSVs this app
writes for people (the dataset export's ``manifest.csv``, Detect's ``expressions.csv``) pass them through
:func:`safe_cell`, which prefixes such text with an apostrophe (OWASP's advice), so they show as typed.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value``, or for text that a spreadsheet would run as a formula, the same text behind an apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: list[object]) -> list[object]:
    return [safe_cell(value) for value in values]
