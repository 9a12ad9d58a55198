"""Sweep results on disk: chunk files, CSV and Parquet tables."""
from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from specmoe.errors import SpecMoEError
from specmoe.fileio import atomic_write
from specmoe.planning.sweep.grid import BOOL_COLUMNS, INT_COLUMNS, STR_COLUMNS

# ---- results on disk ---------------------------------------------------------------------------

def save_npz(path: Path, cols: dict[str, np.ndarray]) -> None:
    arrays = {k: (v.astype(str) if v.dtype == object else v) for k, v in cols.items()}
    atomic_write(path, lambda p: np.savez(p, **arrays))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files}      # each z[k] reads from disk: once
    return {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in cols.items()}


RESULT_SUFFIXES = (".csv", ".parquet", ".pq")


def result_format(out: Path, what: str = "output") -> str:
    """csv or parquet, from the file name; `what` names the file in errors (output, results)."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SpecMoEError(
                f"{what} {out}: parquet needs pyarrow (pip install pyarrow) or use a .csv name"
            ) from None
        return "parquet"
    hint = ""
    if what == "results" and suffix in (".yaml", ".yml"):
        hint = (f" ({out.name} looks like a grid: run `specmoe sweep {out} -o results.csv`, "
                "then `specmoe report results.csv`)")
    raise SpecMoEError(f"{what} {out}: unknown format {suffix!r}; allowed .csv, .parquet{hint}")


def write_table(table: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write columns to CSV or Parquet (by the name's suffix), atomically."""
    out = Path(out)
    fmt = result_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tbl = pa.table({k: (v.tolist() if v.dtype == object else v) for k, v in table.items()})
        atomic_write(out, lambda p: pq.write_table(tbl, p))
    else:
        atomic_write(out, lambda p: _write_csv(table, p))
    return out


def _write_csv(table: dict[str, np.ndarray], path: Path) -> None:

    keys = list(table)
    cols = [table[k].tolist() for k in keys]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        w.writerows(zip(*cols))


def _column(name: str, values: list[str]) -> np.ndarray:
    if name in STR_COLUMNS:
        return np.array(values, dtype=object)
    if name in BOOL_COLUMNS:
        return np.array([v == "True" for v in values], dtype=bool)
    if name in INT_COLUMNS:
        return np.array(values, dtype=np.int64)
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return np.array(values, dtype=object)


def load_results(path: str | Path) -> dict[str, np.ndarray]:
    """Read a sweep's CSV or Parquet back into columns (numpy arrays; strings as object arrays)."""
    path = Path(path)
    if not path.is_file():
        raise SpecMoEError(f"results {path}: no such file")
    fmt = result_format(path, "results")
    try:
        return _read_parquet(path) if fmt == "parquet" else _read_csv(path)
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        if isinstance(exc, SpecMoEError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SpecMoEError(f"results {path}: not a readable {fmt} file ({first})") from None


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    out = {}
    for name in t.column_names:
        arr = t.column(name).to_numpy(zero_copy_only=False)
        out[name] = arr.astype(object) if arr.dtype.kind in "OU" else arr
    return out


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SpecMoEError(f"results {path}: empty file")
    head, body = rows[0], rows[1:]
    if any(len(r) != len(head) for r in body):
        raise SpecMoEError(f"results {path}: rows of unequal length (not a sweep's CSV)")
    return {k: _column(k, [r[i] for r in body]) for i, k in enumerate(head)}


def concat(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = list(parts)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
