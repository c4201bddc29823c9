"""Objects as a model reads them: what `{name}` puts into a prompt.

`str(df)` is made for a terminal: pandas cuts the middle columns, aligns with
spaces and says nothing about dtypes. A model reads Markdown and wants the
shape, the columns with their types and some rows, so `render` picks, in
order:

1. the value's own `_repr_llm_()` (the protocol proposed by `repr_llm`);
2. pandas / polars DataFrames and Series: shape, columns and dtypes, and the
   first and last rows as a Markdown table;
3. NumPy arrays: shape, dtype, min / max / mean, and the edges;
4. the value's `_repr_markdown_()`;
5. `str(value)`.

Every rendering is bounded (`bound`) with a visible note of what was cut.
No optional library is ever imported here: a value is a DataFrame only if
pandas is already in `sys.modules` (it must be, for the value to exist).
Methods are looked up on the type, not the instance, so an object whose
`__getattr__` answers every name is not mistaken for one with a protocol.
Only whole frames' heads and tails are touched: a 100,000-row frame renders
in about a millisecond.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["DEFAULT_MAX_CHARS", "bound", "render"]

DEFAULT_MAX_CHARS = 8000
EDGE_ROWS = 5  # rows shown from each end of a frame
MAX_TABLE_COLUMNS = 20  # columns shown in a table (first and last half)
_CELL_CHARS = 60  # one table cell


def bound(text: str, limit: int = DEFAULT_MAX_CHARS, *, what: str = "value") -> str:
    """`text` cut to about `limit` characters: the head and the tail, with a note between.

    The note says how much was cut and which setting bounds it, so neither
    the model nor the user mistakes the excerpt for the whole.
    """
    if limit <= 0 or len(text) <= limit:
        return text
    tail = limit // 4
    head = limit - tail
    # Cut at line ends when one is near, so tables and code stay whole lines.
    nl = text.rfind("\n", head - 200, head)
    if nl > 0:
        head = nl + 1
    nl = text.find("\n", len(text) - tail, len(text) - tail + 200)
    start = nl + 1 if nl >= 0 else len(text) - tail
    cut = start - head
    note = (f"[… {cut:,} of {len(text):,} characters of this {what} cut here "
            f"(OllamaMagics.max_var_chars = {limit:,}) …]")
    return f"{text[:head]}\n{note}\n{text[start:]}"


def render(value: Any, conversion: str | None = None, limit: int = DEFAULT_MAX_CHARS) -> str:
    """The text `{name}` becomes: see the module docstring. `!s` / `!r` force str / repr.

    May raise whatever the value's own methods raise; the caller decides
    what a failed rendering means (interpolation leaves the reference as written).
    """
    if conversion == "r":
        text = _plain(repr(value))
    elif conversion == "s":
        text = _plain(str(value))
    else:
        text = _rich(value)
    return bound(text, limit)


def _plain(text: Any) -> str:
    # A __str__ may return a str subclass with hostile methods; copy it into
    # a plain str so nothing user-defined runs after this point.
    if not isinstance(text, str):
        raise TypeError("not a string")
    return str.__str__(text)


def _method(value: Any, name: str) -> Callable[[], Any] | None:
    """`value.name` if its *type* defines it (as IPython's formatters look it up)."""
    if isinstance(value, type):
        return None  # a class's _repr_*_ methods are for its instances
    func = getattr(type(value), name, None)
    if not callable(func):
        return None
    return lambda: func(value)


def _rich(value: Any) -> str:
    if isinstance(value, str):
        return _plain(value)
    llm = _method(value, "_repr_llm_")
    if llm is not None:
        try:
            out = llm()
            if isinstance(out, str):
                return _plain(out)
        except Exception:  # a broken protocol method: fall through to the next way
            pass
    for describe in (_pandas, _polars, _numpy):
        text = describe(value)
        if text is not None:
            return text
    md = _method(value, "_repr_markdown_")
    if md is not None:
        try:
            out = md()
            if isinstance(out, tuple) and out:  # (data, metadata), as IPython allows
                out = out[0]
            if isinstance(out, str) and out:
                return _plain(out)
        except Exception:
            pass
    return _plain(str(value))


def _loaded(module: str, *names: str) -> tuple[Any, ...]:
    """Classes of an already imported library (never imports it)."""
    mod = sys.modules.get(module)
    if mod is None:
        return ()
    found = tuple(getattr(mod, n, None) for n in names)
    return tuple(c for c in found if isinstance(c, type))


def _cell(value: Any) -> str:
    text = str(value)
    if len(text) > _CELL_CHARS:
        text = text[: _CELL_CHARS - 1] + "…"
    # A Markdown table cell is one line, and `|` would end it.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _pick(n: int) -> tuple[list[int], bool]:
    """Column positions to show out of `n`, and whether some were skipped."""
    if n <= MAX_TABLE_COLUMNS:
        return list(range(n)), False
    half = MAX_TABLE_COLUMNS // 2
    return list(range(half)) + list(range(n - half, n)), True


def _table(header: Sequence[str], head: Iterable[Sequence[Any]], tail: Iterable[Sequence[Any]] | None,
           gap: int | None = None) -> str:
    """A Markdown table of `head` rows, a `…` row, then `tail` rows; a `…` column at `gap`."""
    def line(cells: Iterable[Any]) -> str:
        shown = [_cell(c) for c in cells]
        if gap is not None:
            shown.insert(gap, "…")
        return "| " + " | ".join(shown) + " |"

    width = len(header) + (gap is not None)
    lines = [line(header), "|" + "---|" * width]
    lines += [line(r) for r in head]
    if tail is not None:
        lines.append("| " + " | ".join("…" for _ in range(width)) + " |")
        lines += [line(r) for r in tail]
    return "\n".join(lines)


def _rows_note(n: int) -> str:
    return f"first {EDGE_ROWS} and last {EDGE_ROWS} rows" if n > 2 * EDGE_ROWS else "all rows"


def _pandas(value: Any) -> str | None:
    classes = _loaded("pandas", "DataFrame", "Series")
    if not classes or not isinstance(value, classes):
        return None
    frame_cls = classes[0]
    if isinstance(value, frame_cls):
        rows, ncols = value.shape
        cols, more = _pick(ncols)
        index_title = str(value.index.name) if value.index.name is not None else ""
        header = [index_title] + [str(value.columns[i]) for i in cols]

        def part(frame: Any) -> list[list[Any]]:
            picked = frame.iloc[:, cols]
            return [[idx, *vals] for idx, *vals in picked.itertuples(index=True, name=None)]

        long = rows > 2 * EDGE_ROWS
        head = part(value.iloc[:EDGE_ROWS] if long else value)
        tail = part(value.iloc[-EDGE_ROWS:]) if long else None
        dtypes = ", ".join(f"{c} ({t})" for c, t in zip(value.columns, value.dtypes))
        return (f"pandas DataFrame: {rows:,} rows × {ncols:,} columns\n"
                f"columns: {dtypes or '(none)'}\n"
                f"{_rows_note(rows)}:\n\n"
                + _table(header, head, tail, gap=1 + MAX_TABLE_COLUMNS // 2 if more else None))
    n = len(value)
    long = n > 2 * EDGE_ROWS
    name = "" if value.name is None else f" {str(value.name)!r}"

    def items(series: Any) -> list[list[Any]]:
        return [[i, v] for i, v in zip(series.index, series.to_numpy())]

    head = items(value.iloc[:EDGE_ROWS] if long else value)
    tail = items(value.iloc[-EDGE_ROWS:]) if long else None
    index_title = str(value.index.name) if value.index.name is not None else ""
    return (f"pandas Series{name}: {n:,} values, dtype {value.dtype}\n{_rows_note(n)}:\n\n"
            + _table([index_title, "value" if value.name is None else str(value.name)], head, tail))


def _polars(value: Any) -> str | None:
    classes = _loaded("polars", "DataFrame", "Series")
    if not classes or not isinstance(value, classes):
        return None
    if isinstance(value, classes[0]):
        rows, ncols = value.shape
        cols, more = _pick(ncols)
        names = value.columns
        header = [names[i] for i in cols]
        long = rows > 2 * EDGE_ROWS

        def part(frame: Any) -> list[list[Any]]:
            return [[r[i] for i in cols] for r in frame.rows()]

        head = part(value.head(EDGE_ROWS) if long else value)
        tail = part(value.tail(EDGE_ROWS)) if long else None
        dtypes = ", ".join(f"{c} ({t})" for c, t in zip(names, value.dtypes))
        return (f"polars DataFrame: {rows:,} rows × {ncols:,} columns\n"
                f"columns: {dtypes or '(none)'}\n"
                f"{_rows_note(rows)}:\n\n"
                + _table(header, head, tail, gap=MAX_TABLE_COLUMNS // 2 if more else None))
    n = len(value)
    long = n > 2 * EDGE_ROWS
    head = [[v] for v in (value.head(EDGE_ROWS) if long else value).to_list()]
    tail = [[v] for v in value.tail(EDGE_ROWS).to_list()] if long else None
    name = value.name or "value"
    return (f"polars Series {value.name!r}: {n:,} values, dtype {value.dtype}\n{_rows_note(n)}:\n\n"
            + _table([name], head, tail))


def _numpy(value: Any) -> str | None:
    classes = _loaded("numpy", "ndarray")
    if not classes or not isinstance(value, classes):
        return None
    np = sys.modules["numpy"]
    if value.ndim == 0:
        return f"numpy {value.dtype} scalar array: {value.item()!r}"
    lines = [f"numpy ndarray: shape {value.shape}, dtype {value.dtype}"]
    stats = _summary(np, value)
    if stats:
        lines.append(stats)
    # numpy's own summarisation: the first and last 3 along every axis.
    lines.append(np.array2string(value, threshold=60, edgeitems=3, max_line_width=120))
    return "\n".join(lines)


def _summary(np: Any, a: Any) -> str:
    if a.size == 0:
        return "empty"
    kind = a.dtype.kind
    with np.errstate(all="ignore"):
        if kind == "b":
            return f"{int(np.count_nonzero(a)):,} of {a.size:,} True"
        if kind in "iu":
            return f"min {a.min()}, max {a.max()}, mean {a.mean():.6g}"
        if kind == "f":
            nans = int(np.isnan(a).sum())
            if nans == a.size:
                return f"all {nans:,} values NaN"
            note = f" ({nans:,} NaN)" if nans else ""
            return f"min {np.nanmin(a):.6g}, max {np.nanmax(a):.6g}, mean {np.nanmean(a):.6g}{note}"
        if kind in "mM":
            return f"min {a.min()}, max {a.max()}"
    return ""
