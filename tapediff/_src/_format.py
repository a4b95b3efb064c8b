"""Render numpy arrays exactly like PyTorch's ``repr(torch.tensor(...))``.

This is a numpy port of ``torch/_tensor_str.py`` under PyTorch's default print
options (precision=4, threshold=1000, edgeitems=3, linewidth=80, automatic
scientific notation), restricted to dense real-valued, integer and bool data.
Everything else (complex, quantized, sparse, nested, device and ``grad_fn``
bookkeeping) is out of scope: callers pass such annotations as ``suffixes``.

The one intended difference from PyTorch is the dtype annotation. tapediff's
default float dtype is float64, so float64 goes unannotated where PyTorch leaves
float32 unannotated, and dtypes are spelled ``dtype=float32`` rather than
``dtype=torch.float32``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_PRECISION = 4
_THRESHOLD = 1000
_EDGEITEMS = 3
_LINEWIDTH = 80
_PREFIX = "tensor("

# Dtypes PyTorch infers from the printed values and therefore never annotates
# (with float64 standing in for PyTorch's default float32). Compared by name
# so that byte order does not matter.
_UNANNOTATED_DTYPES = frozenset({"float64", "int64", "bool"})


class _Formatter:
    """Picks one notation and one width for every element, as torch's ``_Formatter``."""

    def __init__(self, values: np.ndarray) -> None:
        self.floating = bool(np.issubdtype(values.dtype, np.floating))
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1

        flat = values.reshape(-1)
        if not self.floating:
            self.max_width = max(1, *(len(str(v)) for v in flat.tolist()))
            return

        # As in torch, zeros and nan/inf never force a notation (they have no
        # magnitude and no fractional part), so only the other values decide.
        finite = flat[np.isfinite(flat) & (flat != 0)].astype(np.float64)
        if finite.size == 0:
            return
        smallest = float(np.abs(finite).min())
        largest = float(np.abs(finite).max())
        self.int_mode = bool(np.all(finite == np.ceil(finite)))
        self.sci_mode = largest / smallest > 1000.0 or largest > 1.0e8 or smallest < 1.0e-4

        for value in finite.tolist():
            if self.sci_mode:
                width = len(f"{value:.{_PRECISION}e}")
            elif self.int_mode:
                # +1 for the trailing "." that marks integral floats as floats.
                width = len(f"{value:.0f}") + 1
            else:
                width = len(f"{value:.{_PRECISION}f}")
            self.max_width = max(self.max_width, width)

    def format(self, value: float | int | bool) -> str:
        if not self.floating:
            text = str(value)
        elif self.sci_mode:
            text = f"{value:{self.max_width}.{_PRECISION}e}"
        elif self.int_mode:
            text = f"{value:.0f}"
            if math.isfinite(value):
                text += "."
        else:
            text = f"{value:.{_PRECISION}f}"
        return text.rjust(self.max_width)


def _summarized(values: np.ndarray) -> np.ndarray:
    """The elements that survive summarization, so only they influence the format."""
    if values.ndim == 0:
        return values
    if values.shape[0] > 2 * _EDGEITEMS:
        values = np.concatenate((values[:_EDGEITEMS], values[-_EDGEITEMS:]))
    if values.ndim == 1:
        return values
    return np.stack([_summarized(row) for row in values])


def _vector_str(row: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    # Each element takes its width plus the ", " separating it from the next.
    per_line = max(1, (_LINEWIDTH - indent) // (fmt.max_width + 2))
    if summarize and row.shape[0] > 2 * _EDGEITEMS:
        items = (
            [fmt.format(v) for v in row[:_EDGEITEMS].tolist()]
            + [" ..."]
            + [fmt.format(v) for v in row[-_EDGEITEMS:].tolist()]
        )
    else:
        items = [fmt.format(v) for v in row.tolist()]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _body_str(values: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    if values.ndim == 0:
        return fmt.format(values.item())
    if values.ndim == 1:
        return _vector_str(values, indent, summarize, fmt)

    if summarize and values.shape[0] > 2 * _EDGEITEMS:
        slices = (
            [_body_str(sub, indent + 1, summarize, fmt) for sub in values[:_EDGEITEMS]]
            + ["..."]
            + [_body_str(sub, indent + 1, summarize, fmt) for sub in values[-_EDGEITEMS:]]
        )
    else:
        slices = [_body_str(sub, indent + 1, summarize, fmt) for sub in values]
    # Blocks of higher-dimensional slices are separated by ndim - 1 newlines
    # (i.e. blank lines between matrices of a 3-d tensor).
    return "[" + ("," + "\n" * (values.ndim - 1) + " " * (indent + 1)).join(slices) + "]"


def _add_suffixes(text: str, suffixes: Sequence[str], indent: int) -> str:
    parts = [text]
    # PyTorch overestimates the last line's length by 2 (rfind gives -1 when
    # there is no newline); reproduced so suffixes wrap at the same points.
    last_line_len = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > _LINEWIDTH:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


def format_tensor(values: np.ndarray, suffixes: Sequence[str] = ()) -> str:
    """Return ``values`` rendered as PyTorch would print a tensor holding them.

    ``suffixes`` (e.g. ``"requires_grad=True"``, ``"grad_fn=<MulBackward0>"``)
    are appended after the size/dtype annotations this function derives itself.
    """
    values = np.asarray(values)
    # bool, signed/unsigned int and real float: the kinds torch prints as plain numbers.
    if values.dtype.kind not in "biuf":
        raise TypeError(f"cannot format arrays of dtype {values.dtype}")

    annotations: list[str] = []
    if values.size == 0:
        # Nothing to show the shape, so PyTorch prints it unless it is (0,) ...
        if values.ndim != 1:
            annotations.append(f"size={tuple(values.shape)}")
        # ... and no element hints at the dtype, so every non-default one is named.
        if values.dtype.name != "float64":
            annotations.append(f"dtype={values.dtype.name}")
        body = "[]"
    else:
        if values.dtype.name not in _UNANNOTATED_DTYPES:
            annotations.append(f"dtype={values.dtype.name}")
        summarize = values.size > _THRESHOLD
        fmt = _Formatter(_summarized(values) if summarize else values)
        body = _body_str(values, len(_PREFIX), summarize, fmt)
    return _add_suffixes(_PREFIX + body, [*annotations, *suffixes], len(_PREFIX))
