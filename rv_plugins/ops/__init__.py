"""Scan op library shared by every recurrent layer (see ``scan.py`` for the maths)."""
from .layout import (from_sequence, from_sequence_by_rows, from_sequence_by_columns, to_sequence,
                     to_sequence_by_columns, to_sequence_by_rows)
from .mingru import mingru_scan, mingru_scan_backward, mingru_scan_reference
from .reference import linear_scan_reference
from .scan import BACKENDS, backend_name, linear_scan, resolve_backend

__all__ = [
    "linear_scan", "linear_scan_reference", "mingru_scan", "mingru_scan_reference", "mingru_scan_backward",
    "backend_name", "resolve_backend", "BACKENDS",
    "to_sequence", "from_sequence", "to_sequence_by_rows", "from_sequence_by_rows",
    "to_sequence_by_columns", "from_sequence_by_columns",
]
