"""Sketch many keyed columns of a partitioned (Dask) table in parallel, then merge.

Requires the optional ``dask`` extra (``pip install "kernelsketch[dask]"``).
Rows are shuffled on the key (partitions then have disjoint key supports), the
columns' global norms are summed over partitions, each partition is sketched
with them and the partial sketches are merged in a tree. The result equals the
single-machine sketch (exactly for ``"mh"``, up to float rounding otherwise);
threshold sampling uses its non-adaptive scale here. Theory:
docs/inner_products.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelsketch.distributed.dask import tree_reduce
from kernelsketch.inner.base import l2_norm
from kernelsketch.inner.join import (
    ColumnSketch,
    check_options,
    keyed_vectors,
    sketch_keyed_vectors,
)

__all__ = ["sketch_table"]


def _vectors(part: Any, key: str, column: str, seed: int, duplicates: str, nan: str):
    return keyed_vectors(
        part[key].to_numpy(),
        part[column].to_numpy(),
        seed=seed,
        duplicates=duplicates,
        nan=nan,
        name=column,
    )


def _norms(
    part: Any, key: str, columns: Sequence[str], seed: int, duplicates: str, nan: str
) -> np.ndarray:
    out = np.zeros((len(columns), 3))
    for i, col in enumerate(columns):
        _, *vecs = _vectors(part, key, col, seed, duplicates, nan)
        out[i] = [l2_norm(v) for v in vecs]
    return out


def _partial_sketches(
    part: Any, key: str, columns: Sequence[str], options: dict, nan: str, norms: np.ndarray
) -> list[ColumnSketch]:
    return [
        sketch_keyed_vectors(
            _vectors(part, key, col, options["seed"], options["duplicates"], nan),
            norms=tuple(float(n) for n in norms[i]),
            **options,
        )
        for i, col in enumerate(columns)
    ]


def _merge_lists(a: list[ColumnSketch], b: list[ColumnSketch]) -> list[ColumnSketch]:
    return [x.merge(y) for x, y in zip(a, b)]


def sketch_table(
    frame: Any,
    key: str,
    columns: Sequence[str],
    *,
    size: int,
    method: str = "ts",
    seed: int = 0,
    duplicates: str = "mean",
    nan: str = "raise",
    rows: int = 1,
) -> dict[str, ColumnSketch]:
    """Sketch numeric columns of a Dask DataFrame for join estimation, in parallel.

    Parameters
    ----------
    frame : dask.dataframe.DataFrame
        The partitioned table.
    key : str
        Name of the join-key column (integers, strings or datetimes).
    columns : sequence of str
        Numeric columns to sketch.
    size, method, seed, duplicates, nan, rows
        As in :func:`kernelsketch.inner.join.sketch_column`; sketches built
        here are comparable with ``sketch_column`` sketches of equal parameters.

    Returns
    -------
    dict mapping each column name to its :class:`~kernelsketch.inner.join.ColumnSketch`.

    Raises
    ------
    ImportError if dask is not installed; TypeError if ``frame`` is not a Dask
    DataFrame; ValueError if ``key`` or a column is missing.
    """
    try:
        import dask
        import dask.dataframe as dd
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("sketch_table needs dask: pip install 'kernelsketch[dask]'") from exc
    if not isinstance(frame, dd.DataFrame):
        raise TypeError(f"frame must be a dask.dataframe.DataFrame, got {type(frame).__name__}")
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one column, got none")
    for name in [key, *columns]:
        if name not in frame.columns:
            raise ValueError(f"frame has no column {name!r}; its columns are {list(frame.columns)}")
    check_options(method, size, rows)
    keyed_vectors([0], [0.0], seed=seed, duplicates=duplicates, nan=nan)  # validate early
    options = {"size": size, "method": method, "seed": seed, "duplicates": duplicates, "rows": rows}

    # one key per partition; persisted so the two passes below shuffle once
    parts = frame[[key, *columns]].shuffle(on=key).persist().to_delayed()
    partial_norms = [dask.delayed(_norms)(p, key, columns, seed, duplicates, nan) for p in parts]
    per_part = np.stack(dask.compute(*partial_norms))  # [parts, columns, 3]
    norms = np.array(  # the whole column's norms: the l2 norm of the parts' norms
        [[l2_norm(per_part[:, i, j]) for j in range(3)] for i in range(len(columns))]
    )
    level = [dask.delayed(_partial_sketches)(p, key, columns, options, nan, norms) for p in parts]
    (merged,) = dask.compute(tree_reduce(level, _merge_lists))  # pairwise tree merge
    return dict(zip(columns, merged))
