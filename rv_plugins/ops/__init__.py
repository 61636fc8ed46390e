"""Scan op library shared by every recurrent layer: ``linear_scan`` and ``mingru_scan`` over a table of
backends (``registry``); see ``scan.py`` for the maths and the routes a call takes."""
from . import registry
from .layout import (from_sequence, from_sequence_by_columns, from_sequence_by_rows, to_sequence,
                     to_sequence_by_columns, to_sequence_by_rows)
from .mingru import mingru_scan, mingru_scan_backward, mingru_scan_forward
from .reference import linear_scan_reference, mingru_scan_reference
from .registry import backend_names, register_backend
from .scan import BACKENDS, backend_name, linear_scan, resolve_backend

__all__ = [
    "linear_scan", "linear_scan_reference", "mingru_scan", "mingru_scan_reference", "mingru_scan_forward",
    "mingru_scan_backward", "backend_name", "resolve_backend", "BACKENDS", "backend_names", "register_backend",
    "registry", "to_sequence", "from_sequence", "to_sequence_by_rows", "from_sequence_by_rows",
    "to_sequence_by_columns", "from_sequence_by_columns",
]
