"""CSV metric logs (metrics.csv / eval.csv / diagnostics.csv) mirrored to TensorBoard and optionally Weights & Biases."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import numbers
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sphere_rl.runs.atomic import atomic_write_text

__all__ = ["CSV_FILES", "MetricsLogger", "last_env_step", "read_metrics"]

CSV_FILES: dict[str, str] = {"train": "metrics.csv", "eval": "eval.csv", "diag": "diagnostics.csv", "events": "events.csv"}
_INT_RE = re.compile(r"^[+-]?\d+$")


def _split_complete(text: str, path: Path) -> tuple[list[str], list[list[str]], bool]:
    """Parse CSV text into (header, rows, repaired); an unterminated last line (crash mid-write) is dropped."""
    repaired = False
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        warnings.warn(f"{path}: dropping incomplete last line {text[cut:]!r}", RuntimeWarning, stacklevel=3)
        text, repaired = text[:cut], True
    table = list(csv.reader(io.StringIO(text, newline="")))
    if not table:
        return [], [], repaired
    header, rows = table[0], []
    for i, row in enumerate(table[1:], start=2):
        if len(row) != len(header):
            warnings.warn(f"{path}: dropping malformed line {i} ({len(row)} fields, header has {len(header)})", RuntimeWarning, stacklevel=3)
            repaired = True
            continue
        rows.append(row)
    return header, rows, repaired


def _render(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_cell(cell: str) -> Any:
    if cell == "":
        return None
    if _INT_RE.match(cell):
        return int(cell)
    try:
        return float(cell)
    except ValueError:
        return cell


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a metrics CSV as dicts: empty cells -> None, integers -> int, other numbers -> float."""
    path = Path(path)
    header, rows, _ = _split_complete(path.read_text(encoding="utf-8"), path)
    return [{k: _parse_cell(c) for k, c in zip(header, row)} for row in rows]


def last_env_step(path: str | os.PathLike[str]) -> int:
    """The `env_step` (first column) of the last row of a CSV log that is being written, cheaply and
    without warnings (for progress polling); -1 when the file or a row is not there yet."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return -1
    first = lines[-1].split(",", 1)[0] if len(lines) >= 2 else ""
    return int(first) if first.isdigit() else -1


def _scalar(key: str, value: Any) -> Any:
    """Normalise a row value to None / bool / int / float / str (arrays must have exactly one element)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (np.generic, np.ndarray)) or (hasattr(value, "__array__") and hasattr(value, "dtype")):
        arr = np.asarray(value)
        if arr.size != 1:
            raise ValueError(f"metric {key!r} must be a scalar, got an array of shape {arr.shape}")
        return arr.reshape(()).item()
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"metric {key!r} has unsupported type {type(value).__name__}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)  # str(float) is the shortest round-tripping repr


class MetricsLogger:
    """Append-only CSV logs for ``train`` (metrics.csv), ``eval`` (eval.csv) and ``diag`` (diagnostics.csv) rows.

    Every row must contain ``step_key`` (default ``env_step``), used as the TensorBoard/W&B step.
    Pass ``resume_step`` when resuming from a checkpoint: rows after it are removed
    (see :meth:`truncate_after`) and TensorBoard hides the superseded events.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tensorboard: bool = True,
        *,
        wandb: bool = False,
        wandb_kwargs: dict[str, Any] | None = None,
        step_key: str = "env_step",
        task_key: str = "task",
        resume_step: int | None = None,
    ) -> None:
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.step_key, self.task_key = step_key, task_key
        self._tensorboard = tensorboard
        self._tb: Any = None
        self._purge_step: int | None = None
        self._wandb_run: Any = None
        self._closed = False
        self._columns: dict[str, list[str]] = {}
        self._synced: dict[str, tuple[int, str]] = {}
        """(bytes, sha256) of each CSV at the last checkpoint (see checkpoint_tables)."""
        for kind in CSV_FILES:
            self._columns[kind] = self._load_columns(self.csv_path(kind))
        if wandb:
            self._wandb_run = self._init_wandb(wandb_kwargs or {})
        if resume_step is not None:
            self.truncate_after(step_key, resume_step)

    def csv_path(self, kind: str) -> Path:
        """Path of the CSV file for ``kind`` (a key of CSV_FILES)."""
        if kind not in CSV_FILES:
            raise ValueError(f"kind must be one of {sorted(CSV_FILES)}, got {kind!r}")
        return self.root / CSV_FILES[kind]

    def columns(self, kind: str) -> list[str]:
        """Current column order of the ``kind`` CSV."""
        self.csv_path(kind)
        return list(self._columns[kind])

    @staticmethod
    def _load_columns(path: Path) -> list[str]:
        if not path.exists():
            return []
        header, rows, repaired = _split_complete(path.read_text(encoding="utf-8"), path)
        if repaired:
            atomic_write_text(path, _render(header, rows) if header else "")
        return header

    def _init_wandb(self, kwargs: dict[str, Any]) -> Any:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("MetricsLogger(wandb=True) needs the optional 'wandb' package: pip install wandb") from exc
        config_path = self.root / "config.json"
        if config_path.exists() and "config" not in kwargs:
            import json

            kwargs = {**kwargs, "config": json.loads(config_path.read_text(encoding="utf-8"))}
        run = wandb.init(dir=str(self.root), **{"name": self.root.name, **kwargs})
        run.define_metric(self.step_key)
        run.define_metric("*", step_metric=self.step_key)
        return run

    def _writer(self) -> Any:
        if self._tb is None:
            from tensorboardX import SummaryWriter

            # tensorboardX names files by whole seconds + host; a nanosecond suffix keeps two writers opened
            # within one second from clobbering each other and sorts them chronologically (TensorBoard's order).
            self._tb = SummaryWriter(
                logdir=str(self.root / "tb"),
                purge_step=self._purge_step,
                flush_secs=10,
                filename_suffix=f".{time.time_ns():020d}",
            )
        return self._tb

    def log(self, kind: str, row: Mapping[str, Any]) -> None:
        """Append ``row`` to the ``kind`` CSV (flushed) and mirror its numeric values to TensorBoard/W&B."""
        if self._closed:
            raise RuntimeError("MetricsLogger is closed")
        path = self.csv_path(kind)
        values = {str(k): _scalar(str(k), v) for k, v in row.items()}
        step = values.get(self.step_key)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise ValueError(f"every logged row needs a finite numeric {self.step_key!r}, got {step!r}")
        columns = self._columns[kind]
        new = [k for k in values if k not in columns]
        if not columns or new:
            old_header, old_rows = [], []
            if columns and path.exists():
                old_header, old_rows, _ = _split_complete(path.read_text(encoding="utf-8"), path)
            columns = (old_header or columns) + new
            width = len(columns)
            rows = [r + [""] * (width - len(r)) for r in old_rows]
            rows.append([_cell(values.get(c)) for c in columns])
            atomic_write_text(path, _render(columns, rows))
            self._columns[kind] = columns
        else:
            with open(path, "a", encoding="utf-8", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerow([_cell(values.get(c)) for c in columns])
                fh.flush()
        self._mirror(kind, values, int(step))

    def _mirror(self, kind: str, values: dict[str, Any], step: int) -> None:
        prefix = kind
        if kind == "eval" and values.get(self.task_key) is not None:
            prefix = f"eval/{values[self.task_key]}"
        scalars = {
            f"{prefix}/{k}": float(v)
            for k, v in values.items()
            if k not in (self.step_key, self.task_key) and isinstance(v, (bool, int, float)) and math.isfinite(v)
        }
        if self._tensorboard and scalars:
            writer = self._writer()
            for tag, v in scalars.items():
                writer.add_scalar(tag, v, global_step=step)
        if self._wandb_run is not None and scalars:
            self._wandb_run.log({**scalars, self.step_key: step})

    def truncate_after(self, step_col: str = "env_step", step: int = 0) -> dict[str, int]:
        """Keep only rows whose ``step_col`` value is a number <= ``step`` in both CSVs (atomic rewrite).

        Rows with an empty or non-numeric ``step_col`` are dropped. Returns rows removed per kind.
        When ``step_col`` is the TensorBoard step key, later TensorBoard events are purged too.
        """
        removed: dict[str, int] = {}
        for kind in CSV_FILES:
            path = self.csv_path(kind)
            if not path.exists():
                continue
            header, rows, _ = _split_complete(path.read_text(encoding="utf-8"), path)
            if not header:
                continue
            if step_col not in header:
                raise ValueError(f"{path}: no column {step_col!r} (columns: {header})")
            i = header.index(step_col)
            kept = [r for r in rows if isinstance(v := _parse_cell(r[i]), (int, float)) and v <= step]
            atomic_write_text(path, _render(header, kept))
            self._columns[kind] = header
            removed[kind] = len(rows) - len(kept)
        if step_col == self.step_key:
            self._purge_step = int(step) + 1
            if self._tb is not None:  # reopen so the new event file carries the purge marker
                self._tb.close()
                self._tb = None
        return removed

    # ------------------------------------------------------------------ the tables' state in checkpoints
    def checkpoint_tables(self) -> dict[str, dict[str, Any]]:
        """Make every CSV durable (fsync) and describe it for a checkpoint's meta.

        Per file: its length and SHA-256 now, and the text written since the previous call (``tail``, from
        byte ``tail_from``, whose prefix hash is ``prefix_sha256``). :meth:`restore_tables` turns the files
        back into exactly these bytes, rebuilding a lost tail (a power cut after the checkpoint was durable
        but before the rows were) from the checkpoint itself.
        """
        tables: dict[str, dict[str, Any]] = {}
        previous = self._synced
        for kind in CSV_FILES:
            path = self.csv_path(kind)
            data = b""
            if path.exists():
                with open(path, "rb+") as fh:
                    data = fh.read()
                    os.fsync(fh.fileno())
            prev_len, prev_sha = previous.get(kind, (0, _sha(b"")))
            if not (len(data) >= prev_len and _sha(data[:prev_len]) == prev_sha):
                prev_len, prev_sha = 0, _sha(b"")  # rewritten (a new column): the whole file is the tail
            tables[kind] = {"bytes": len(data), "sha256": _sha(data), "tail_from": prev_len,
                            "prefix_sha256": prev_sha, "tail": data[prev_len:].decode("utf-8")}
        self._synced = {kind: (t["bytes"], t["sha256"]) for kind, t in tables.items()}
        return tables

    def restore_tables(self, tables: Mapping[str, Mapping[str, Any]], step: int) -> dict[str, str]:
        """Make every CSV exactly what it was when the checkpoint of env step ``step`` was written.

        Rows written after it are cut; a tail lost or damaged after the previous checkpoint is rebuilt from
        ``tables`` (what :meth:`checkpoint_tables` returned then). A file damaged before that cannot be
        rebuilt: it is cut to the rows up to ``step`` with a warning. Returns what was done per file.
        """
        done: dict[str, str] = {}
        for kind in CSV_FILES:
            info = tables.get(kind)
            if info is None:
                continue
            path = self.csv_path(kind)
            data = path.read_bytes() if path.exists() else b""
            n, tail_from = int(info["bytes"]), int(info["tail_from"])
            if len(data) >= n and _sha(data[:n]) == info["sha256"]:
                target, done[kind] = data[:n], ("kept" if len(data) == n else "cut")
            elif len(data) >= tail_from and _sha(data[:tail_from]) == info["prefix_sha256"]:
                target, done[kind] = data[:tail_from] + info["tail"].encode("utf-8"), "rebuilt"
            else:
                done[kind] = "damaged"
                continue
            if _sha(target) != info["sha256"]:  # a checkpoint that passed its checksum cannot get here
                done[kind] = "damaged"
                continue
            if target != data:
                atomic_write_text(path, target.decode("utf-8"))
            self._columns[kind] = _split_complete(target.decode("utf-8"), path)[0]
        damaged = [k for k, v in done.items() if v == "damaged"]
        if damaged:
            self.truncate_after(self.step_key, step)
            names = ", ".join(CSV_FILES[k] for k in damaged)
            warnings.warn(f"{names} in {self.root} changed before the checkpoint of step {step} was written and "
                          f"cannot be rebuilt; kept its readable rows up to step {step}", RuntimeWarning, stacklevel=2)
        self._synced = {kind: (int(t["bytes"]), t["sha256"]) for kind, t in tables.items()}
        self._purge_step = int(step) + 1
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        return done

    def flush(self) -> None:
        """Flush TensorBoard events (CSV rows are flushed as they are written)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard / W&B; further ``log`` calls raise."""
        if self._closed:
            return
        self._closed = True
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
