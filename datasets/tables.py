"""Labels CSV files: NIH-style (``Image Index`` + ``Finding Labels``) or one column per label.

:func:`read_labels_csv` returns a :class:`LabelTable`: the image key of each row, the label names
and an ``(n, L)`` float32 matrix (NaN = unknown), and patient ids when the file has them (for
patient-level splits).

Label columns are binary: 0, 1, or empty / ``nan`` / ``-1`` / ``unknown`` for unknown. A column
whose other values are not a stray typo (at least two such cells and at least 5% of its known
cells, e.g. a digit 0-9 or yes/no) is refused as a whole, even with ``skip_bad``, with a message
that says how to turn it into binary columns (one 0/1 column per class); a few stray values are bad
rows: they raise, or with ``skip_bad`` each bad row is skipped and counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError
from datasets.labels import LABELS, LabelError, parse_finding_labels

# Columns that name the image file, in order of preference (case-insensitive).
ID_COLUMNS = ("Image Index", "image", "file", "filename", "file_name", "path", "image_id", "id", "Path")
FINDING_LABELS = "Finding Labels"
PATIENT_COLUMNS = ("Patient ID", "patient", "patient_id", "PatientID", "subject_id")
# NIH metadata columns (and the pieces of the ones whose names were split at commas)
META_COLUMNS = {
    "follow-up #",
    "patient id",
    "patient age",
    "patient gender",
    "patient sex",
    "view position",
    "originalimage[width",
    "height]",
    "originalimagepixelspacing[x",
    "y]",
    "age",
    "sex",
    "gender",
    "view",
}


@dataclass(frozen=True)
class LabelTable:
    """One labels CSV: ``keys[i]`` names the image of row ``i``; ``values`` is ``(n, L)``."""

    path: Path
    keys: list[str]
    labels: tuple[str, ...]
    values: np.ndarray
    patients: list[str] | None
    skipped: list[tuple[str, str]]
    rows: list[int] | None = None  # line number in the CSV of each key (header = line 1)
    skipped_keys: frozenset[str] = frozenset()  # image keys of rows left out with skip_bad


def _find(columns, candidates) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    return None


UNKNOWN_CELLS = ("", "nan", "na", "-1", "-1.0", "unknown")
CATEGORICAL_FRACTION = 0.05  # share of a column's known cells that are not 0/1: a categorical column


def _is_unknown(cell: str) -> bool:
    return cell.lower() in UNKNOWN_CELLS


def _binary(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if value in (0.0, 1.0) else None


def _check_binary_column(col: str, cells: list[str], path: Path) -> None:
    """Refuse a column that holds classes rather than 0/1 (see the module docstring)."""
    known = [c for c in cells if not _is_unknown(c)]
    bad = [c for c in known if _binary(c) is None]
    if len(bad) < 2 or len(bad) < CATEGORICAL_FRACTION * len(known):
        return
    values = sorted(set(known), key=lambda c: (float(c), c) if all(map(_num, known)) else (0.0, c))
    shown = ", ".join(values[:12]) + (f", ... ({len(values)} values)" if len(values) > 12 else "")
    if len(values) > 2:
        example = ", ".join(f"{col}_{v}" for v in values[:3]) + ", ..."
        how = (
            f"labels must be binary: turn it into one 0/1 column per class ({example}), "
            "1 where the image belongs to that class, 0 elsewhere"
        )
    else:
        how = "labels must be 0, 1 or empty (unknown): map its two values to 0 and 1"
    raise DatasetError(f"label column {col!r} has values {shown}; {how}", path)


def _num(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_labels_csv(path: str | Path, *, skip_bad: bool = False, require_patient: bool = False) -> LabelTable:
    """Read a labels CSV (see module docstring); bad rows raise, or are skipped with ``skip_bad``."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise DatasetError("labels CSV not found", path) from None
    except Exception as exc:  # pandas raises many types for malformed files
        raise DatasetError(f"unreadable CSV ({type(exc).__name__}: {exc})", path) from None
    df.columns = [str(c).strip() for c in df.columns]
    id_col = _find(df.columns, ID_COLUMNS)
    if id_col is None:
        raise DatasetError(
            f"missing image column: need one of {', '.join(ID_COLUMNS[:4])} (found: {', '.join(df.columns)})",
            path,
        )
    patient_col = _find(df.columns, PATIENT_COLUMNS)
    if require_patient and patient_col is None:
        raise DatasetError(f"missing column 'Patient ID' (found: {', '.join(df.columns)})", path)
    skipped: list[tuple[str, str]] = []
    finding_col = _find(df.columns, (FINDING_LABELS,))
    keys = [k.strip() for k in df[id_col].tolist()]
    if finding_col is not None:
        names = LABELS
        rows, keep = [], []
        for i, text in enumerate(df[finding_col].tolist()):
            try:
                rows.append(parse_finding_labels(text))
                keep.append(i)
            except LabelError as exc:
                reason = f"row {i + 2} ({keys[i]}): {exc}"
                if not skip_bad:
                    raise DatasetError(reason, path) from None
                skipped.append((str(path), reason))
        values = np.stack(rows) if rows else np.zeros((0, len(names)), np.float32)
    else:
        label_cols = [
            c
            for c in df.columns
            if c not in (id_col, patient_col)
            and c.strip().lower() not in META_COLUMNS
            and c
            and not c.lower().startswith("unnamed")
        ]
        if not label_cols:
            raise DatasetError(
                f"no label columns besides {id_col!r} and metadata (found: {', '.join(df.columns)})", path
            )
        names = tuple(label_cols)
        for col in names:
            _check_binary_column(col, [c.strip() for c in df[col].tolist()], path)
        table = np.full((len(df), len(names)), np.nan, dtype=np.float32)
        keep = []
        for i in range(len(df)):
            ok = True
            for j, col in enumerate(names):
                cell = df[col].iat[i].strip()
                if _is_unknown(cell):
                    continue
                value = _binary(cell)
                if value is None:  # a row is skipped (and counted) once, at its first bad cell
                    reason = (
                        f"row {i + 2} ({keys[i]}): label {col!r} has value {cell!r}; expected 0, 1 or empty"
                    )
                    if not skip_bad:
                        raise DatasetError(reason, path)
                    skipped.append((str(path), reason))
                    ok = False
                    break
                table[i, j] = value
            if ok:
                keep.append(i)
        values = table[keep]
    skipped_keys = frozenset(keys[i] for i in range(len(keys)) if i not in set(keep))
    lines = [i + 2 for i in keep]
    keys = [keys[i] for i in keep]
    patients = [df[patient_col].iat[i].strip() for i in keep] if patient_col is not None else None
    # empty or duplicate image names
    seen: set[str] = set()
    good = []
    for i, key in enumerate(keys):
        reason = "empty image name" if not key else (f"image {key!r} listed twice" if key in seen else None)
        if reason is not None:
            if not skip_bad:
                raise DatasetError(reason, path)
            skipped.append((str(path), reason))
            skipped_keys |= {key}
            continue
        seen.add(key)
        good.append(i)
    return LabelTable(
        path=path,
        keys=[keys[i] for i in good],
        labels=tuple(names),
        values=values[good].astype(np.float32),
        patients=None if patients is None else [patients[i] for i in good],
        skipped=skipped,
        rows=[lines[i] for i in good],
        skipped_keys=skipped_keys,
    )
