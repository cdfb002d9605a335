"""One long table of every run of a sweep (or any folder of runs): the input of statistics, figures, report.

`load_results(path)` finds every run directory under `path` (a sweep directory, a folder of runs,
or one run) and returns :class:`Results`:

- ``runs``: one row per run: every config field as a dotted column (``net.actor``, ``reg.name``,
  ``run.protocol``, ``seed``, ...), the sweep's ``preset`` and ``job_id``, the run's state
  (``complete``), and its summary scalars (``average_success``, ``env_steps``, ``wall_time_s``,
  the Continual World summary ``cw.average_performance`` / ``cw.forgetting`` / ``cw.forward_transfer``).
- ``long``: one row per measured number, tidy: ``run``, the config fields that *differ* between the
  loaded runs (so a cell is a group of rows by those columns; fields equal in every run are in
  ``constant_config``, stored once), ``source`` (``summary``, ``eval``, ``diagnostics``,
  ``continual``), ``env_step``, ``task_index``, ``task``, ``eval_task_index``, ``eval_task``,
  ``task_end``, ``metric``, ``value``.

Columns and their meaning are listed in docs/results.md; :data:`LONG_COLUMNS` is the fixed part.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from sphere_rl.config import Config

__all__ = ["Results", "load_results", "find_runs", "LONG_COLUMNS", "SOURCES", "flatten_config"]

SOURCES = ("summary", "eval", "diagnostics", "continual")
LONG_COLUMNS = ("run", "source", "env_step", "task_index", "task", "eval_task_index", "eval_task", "task_end",
                "metric", "value")
_ID_COLUMNS = ("env_step", "task_index", "task", "task_step", "eval_task_index", "eval_task", "task_end")
_EXCLUDED_CONFIG = ("run.out_dir", "run.name", "run.progress")
_TOP_LEVEL_FIELDS = ("seed", "methods")
"""Config fields outside any section (the others are `section.field`)."""
_RUN_SCALARS = ("average_success", "env_steps", "wall_time_s", "cw.average_performance", "cw.forgetting",
                "cw.forward_transfer")
"""Per-run numbers of the `runs` table that also appear as `summary` rows of the long table."""


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"net": {"actor": "topk_moe"}}`` -> ``{"net.actor": "topk_moe"}``; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """Every run directory (a folder with config.json and manifest.json) at or under ``path``, sorted."""
    root = Path(path)
    if (root / "config.json").is_file() and (root / "manifest.json").is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.json" in filenames and "manifest.json" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run directory holds no runs
        else:
            dirnames[:] = [d for d in dirnames if d not in ("checkpoints", "tb", "probes", "status", "locks")]
    return sorted(found)


@dataclasses.dataclass
class Results:
    """``runs`` (one row per run), ``long`` (one row per number) and the config shared by every run."""

    runs: pd.DataFrame
    long: pd.DataFrame
    constant_config: dict[str, Any]
    root: Path

    @property
    def varying(self) -> list[str]:
        """Config fields that differ between runs, seed last (the cell columns are these minus seed)."""
        cols = [c for c in self.long.columns if c not in LONG_COLUMNS]
        return sorted((c for c in cols if c != "seed"), key=str) + (["seed"] if "seed" in cols else [])

    @property
    def cell_columns(self) -> list[str]:
        return [c for c in self.varying if c != "seed"]

    def subset(self, runs: Iterable[str]) -> "Results":
        """The same results restricted to the named runs (values of the ``run`` column)."""
        keep = set(runs)
        return Results(runs=self.runs[self.runs["run"].isin(keep)].reset_index(drop=True),
                       long=self.long[self.long["run"].isin(keep)].reset_index(drop=True),
                       constant_config=self.constant_config, root=self.root)

    def combine(self, fields: Iterable[str]) -> tuple["Results", str]:
        """The same results with the config fields ``fields`` replaced by one cell column, named by the
        fields joined with ``+`` and holding their values joined with ``/`` (``reg.name+reg.mode``:
        ``none/loss``, ``sphere/grad``): several fields compared as one (`sphere compare --by a,b`)."""
        fields = list(dict.fromkeys(fields))
        missing = [f for f in fields if f not in self.runs.columns]
        if missing:
            raise ValueError(f"--by {','.join(fields)!r}: {', '.join(missing)} is not a config field of these runs")
        if len(fields) == 1:
            return self, fields[0]
        name = "+".join(fields)

        def joined(frame: pd.DataFrame) -> pd.Series:
            return frame[fields].astype(str).agg("/".join, axis=1)

        runs = self.runs.copy()
        runs[name] = joined(runs)
        long = self.long.drop(columns=[f for f in fields if f in self.long.columns])
        long[name] = self.long["run"].map(runs.set_index("run")[name])
        return Results(runs=runs, long=long, constant_config=self.constant_config, root=self.root), name

    def complete(self) -> "Results":
        """The same results restricted to complete runs (summary.json written)."""
        return self.subset(self.runs.loc[self.runs["complete"], "run"])

    def first_tasks(self, n: int) -> "Results":
        """The complete runs of at least ``n`` tasks, each cut to its first ``n``: a 3-task run and the first
        three tasks of a 10-task run of the same config and seed are the same training (a run's first tasks
        do not depend on the tasks after them), so both can be compared as one cell. Kept: per-task summary
        rows, evaluation rows of the first ``n`` tasks on those tasks, diagnostics rows logged during them;
        ``average_success`` is recomputed over the ``n`` tasks; ``run.tasks`` becomes the ``n`` task ids
        (joined with ``,``). Dropped, as numbers of the whole sequence: the Continual World metrics
        (``continual`` rows, ``cw.*``), ``env_steps`` and ``wall_time_s``."""
        if n < 1:
            raise ValueError(f"the number of tasks must be at least 1, got {n}")
        done = self.complete()
        finals = done.select("summary", "final_success").dropna(subset=["task_index"])
        tasks = {run: rows.sort_values("task_index")["task"].astype(str).tolist()
                 for run, rows in finals.groupby("run", observed=True)}
        keep = sorted(run for run, names in tasks.items() if len(names) >= n)
        if not keep:
            longest = max((len(v) for v in tasks.values()), default=0)
            raise ValueError(f"no complete run has {n} tasks (the longest has {longest})")
        prefix = {run: ",".join(tasks[run][:n]) for run in keep}
        done = done.subset(keep)
        long = done.long
        task_index = pd.to_numeric(long["task_index"], errors="coerce")
        eval_index = pd.to_numeric(long["eval_task_index"], errors="coerce")
        average = (long["source"] == "summary") & (long["metric"] == "average_success")  # recomputed below
        rows = ((long["source"].isin(["summary", "eval", "diagnostics"])) & (task_index < n)
                & ((long["source"] != "eval") | (eval_index < n))).fillna(False) | average
        long = long[rows.to_numpy(dtype=bool, na_value=False)].reset_index(drop=True).copy()
        runs = done.runs.copy()
        per_task = long[(long["source"] == "summary") & (long["metric"] == "final_success")]
        runs["average_success"] = runs["run"].map(per_task.groupby("run", observed=True)["value"].mean())
        for column in ("env_steps", "wall_time_s", *(c for c in runs.columns if c.startswith("cw."))):
            runs[column] = None if column == "cw.reference_run" else np.nan
        is_average = ((long["source"] == "summary") & (long["metric"] == "average_success")).to_numpy(dtype=bool)
        long.loc[is_average, "value"] = (long.loc[is_average, "run"].astype(str)
                                         .map(runs.set_index("run")["average_success"]).to_numpy(dtype=float))
        runs["run.tasks"] = runs["run"].map(prefix)
        constant = dict(self.constant_config)
        if len(set(prefix.values())) == 1:
            constant["run.tasks"] = next(iter(prefix.values()))
            long = long.drop(columns=["run.tasks"], errors="ignore")
        else:
            constant.pop("run.tasks", None)
            long["run.tasks"] = long["run"].map(prefix)
        return Results(runs=runs.reset_index(drop=True), long=long, constant_config=constant, root=self.root)

    def select(self, source: str, metric: str | Iterable[str]) -> pd.DataFrame:
        metrics = [metric] if isinstance(metric, str) else list(metric)
        long = self.long
        return long[(long["source"] == source) & (long["metric"].isin(metrics))]

    def write(self, path: str | os.PathLike[str], fmt: str = "parquet") -> list[Path]:
        """Write ``long`` (and ``runs`` beside it as ``<stem>.runs.<ext>``); ``fmt``: parquet or csv."""
        from sphere_rl.runs.atomic import atomic_write_bytes

        path = Path(path)
        written = []
        for frame, target in ((self.long, path), (self.runs, path.with_name(f"{path.stem}.runs{path.suffix}"))):
            if fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pandas(frame, preserve_index=False)
                meta = {**(table.schema.metadata or {}),
                        b"sphere_rl.constant_config": json.dumps(self.constant_config, default=str).encode()}
                sink = pa.BufferOutputStream()
                pq.write_table(table.replace_schema_metadata(meta), sink)
                written.append(atomic_write_bytes(target, sink.getvalue().to_pybytes()))
            elif fmt == "csv":
                written.append(atomic_write_bytes(target, frame.to_csv(index=False).encode("utf-8")))
            else:
                raise ValueError(f"format must be parquet or csv, got {fmt!r}")
        return written


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        frame = pd.read_csv(path, on_bad_lines="skip")
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return frame if len(frame) else None


Part = dict[str, np.ndarray]
"""Rows of the long table as equal-length column arrays (stacked once at the end: far cheaper than a
DataFrame per file)."""


def _melt(frame: pd.DataFrame, source: str) -> Part:
    """Wide CSV rows -> one row per (row, numeric column): the id columns repeated, ``metric``, ``value``."""
    ids = [c for c in _ID_COLUMNS if c in frame.columns and c != "task_step"]
    values = [c for c, dtype in frame.dtypes.items() if c not in _ID_COLUMNS and dtype.kind in "biuf"]
    n, m = len(frame), len(values)
    out = {c: np.tile(frame[c].to_numpy(), m) for c in ids}
    out["metric"] = np.repeat(np.asarray(values, dtype=object), n)
    out["value"] = frame[values].to_numpy(dtype=np.float64).ravel(order="F") if m else np.empty(0)
    out["source"] = np.full(n * m, source, dtype=object)
    return out


def _part(rows: list[dict[str, Any]], source: str) -> Part:
    keys = ("task_index", "task", "metric", "value")
    out = {k: np.asarray([r[k] for r in rows], dtype=np.float64 if k == "value" else object) for k in keys}
    out["source"] = np.full(len(rows), source, dtype=object)
    return out


def _stack(parts: list[Part]) -> pd.DataFrame:
    """One DataFrame with :data:`LONG_COLUMNS` from many parts (a column a part lacks is missing there)."""
    lengths = [len(p["value"]) for p in parts]
    data = {}
    for col in LONG_COLUMNS:
        arrays = [p[col] if col in p else np.full(n, None, dtype=object) for p, n in zip(parts, lengths)]
        data[col] = np.concatenate(arrays) if arrays else np.empty(0, dtype=object)
    return pd.DataFrame(data)


def _summary_rows(summary: dict[str, Any]) -> Part:
    rows: list[dict[str, Any]] = []
    tasks = summary.get("tasks", [])
    per_task = {"final_success": summary.get("final_success", []), "final_return": summary.get("final_return", []),
                "ntk_rank": summary.get("ntk_rank", []), "proxy_rank": summary.get("proxy_rank", [])}
    for metric, values in per_task.items():
        for i, value in enumerate(values or []):
            rows.append({"task_index": i, "task": tasks[i] if i < len(tasks) else None, "metric": metric,
                         "value": np.nan if value is None else float(value)})
    for i, eigs in enumerate(summary.get("ntk_top_eigenvalues") or []):
        for k, value in enumerate(eigs or []):
            rows.append({"task_index": i, "task": tasks[i] if i < len(tasks) else None, "metric": f"ntk_eig_{k + 1}",
                         "value": np.nan if value is None else float(value)})
    return _part(rows, "summary")


def _summary_scalars(summary: dict[str, Any] | None) -> dict[str, float]:
    if not summary:
        return {}
    final = [v for v in summary.get("final_success", []) if v is not None]
    out = {"average_success": float(np.mean(final)) if final else np.nan,
           "env_steps": float(summary.get("env_steps", np.nan)), "wall_time_s": float(summary.get("wall_time_s", np.nan))}
    for key in ("average_performance", "forgetting", "forward_transfer"):
        value = (summary.get("continual") or {}).get(key)
        if value is not None:
            out[f"cw.{key}"] = float(value)
    return out


def _load_run(root: Path, sweep_root: Path | None, index: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[Part]]:
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    # the types of every field (ConfigError names a bad one; not validate(): runs move), and fields added
    # after the run was made at their defaults, so runs of different versions share one set of columns
    config = Config.from_saved(config).to_dict()
    flat = {k: v for k, v in flatten_config(config).items() if k not in _EXCLUDED_CONFIG}
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    name = os.path.relpath(root, sweep_root) if sweep_root is not None else str(root)
    entry = index.get(root.name, {})
    run_row = {"run": name, "job_id": entry.get("job_id", root.name), "preset": entry.get("preset"),
               "complete": summary is not None, **flat, **_summary_scalars(summary)}
    parts = []
    if summary is not None:
        parts.append(_summary_rows(summary))
    for source, filename in (("eval", "eval.csv"), ("diagnostics", "diagnostics.csv"),
                             ("continual", "continual_metrics.csv")):
        frame = _read_csv(root / filename)
        if frame is not None:
            parts.append(_melt(frame, source))
    parts = [p for p in parts if len(p["value"])]
    for part in parts:
        part["run"] = np.full(len(part["value"]), name, dtype=object)
    return run_row, parts


def _pair_references(run_rows: list[dict[str, Any]], parts: list[Part], roots: list[Path],
                     sweep_root: Path | None) -> None:
    """Forward transfer needs a reference RL run of the same tasks and budget. A complete CRL run without
    one gets, in memory, the Continual World metrics against the loaded RL run whose config is equal to
    its own except ``run.protocol`` (the same seed, method and network): a sweep over
    ``run.protocol=rl,crl`` pairs every seed. The run directories are not changed."""
    from sphere_rl.protocols.continual_metrics import run_continual_metrics

    def key(row: dict[str, Any]) -> str:
        skip = {"run.protocol", "run.reference_run"}
        return json.dumps({k: row[k] for k in sorted(row) if "." in k and k not in skip and not k.startswith("cw.")}
                          | {"seed": row.get("seed")}, sort_keys=True, default=str)

    by_name = dict(zip((r["run"] for r in run_rows), roots))
    references = {key(r): by_name[r["run"]] for r in run_rows if r["complete"] and r.get("run.protocol") == "rl"}
    for row in run_rows:
        if not row["complete"] or row.get("run.protocol") != "crl" or not np.isnan(row.get("cw.forward_transfer", np.nan)):
            continue
        reference = references.get(key(row))
        if reference is None:
            continue
        try:
            metrics = run_continual_metrics(by_name[row["run"]], reference)
        except (ValueError, FileNotFoundError, KeyError):
            continue  # budgets or tasks differ: no forward transfer
        summary = metrics.summary()
        for name in ("average_performance", "forgetting", "forward_transfer"):
            if summary.get(name) is not None:
                row[f"cw.{name}"] = float(summary[name])
        row["cw.reference_run"] = os.path.relpath(reference, sweep_root) if sweep_root else str(reference)
        for i, part in enumerate(parts):
            if part["source"][0] == "continual" and part["run"][0] == row["run"]:
                fresh = _melt(pd.read_csv(io.StringIO(metrics.to_csv())), "continual")
                fresh["run"] = np.full(len(fresh["value"]), row["run"], dtype=object)
                parts[i] = fresh


def load_results(path: str | os.PathLike[str], *, sources: Iterable[str] = SOURCES,
                 complete_only: bool = False, pair_references: bool = True) -> Results:
    """Load every run under ``path`` into :class:`Results` (see the module docstring for the columns).

    ``pair_references``: CRL runs without forward transfer get it against their RL twin in the same
    folder (see :func:`_pair_references`); ``cw.reference_run`` names it."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    sources = tuple(sources)
    bad = set(sources) - set(SOURCES)
    if bad:
        raise ValueError(f"unknown source(s) {sorted(bad)}; sources: {', '.join(SOURCES)}")
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no run directories (config.json + manifest.json) under {root}")
    index: dict[str, dict[str, Any]] = {}
    if (root / "sweep.json").is_file():
        try:
            index = {job["job_id"]: job for job in json.loads((root / "sweep.json").read_text(encoding="utf-8"))["jobs"]}
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{root / 'sweep.json'} is not a sweep index ({type(err).__name__}: {err})") from None
    sweep_root = root if root not in runs else root.parent
    run_rows, parts, roots = [], [], []
    for run_root in runs:
        try:
            row, run_parts = _load_run(run_root, sweep_root, index)
        except (OSError, ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:  # json / csv files
            raise ValueError(f"{run_root} is not a readable run ({type(err).__name__}: {err})".splitlines()[0]) from None
        if complete_only and not row["complete"]:
            continue
        run_rows.append(row)
        roots.append(run_root)
        parts += [p for p in run_parts if p["source"][0] in sources]
    if not run_rows:
        raise ValueError(f"no finished runs (with summary.json) under {root}; its {len(runs)} unfinished "
                         "run(s) load with include-incomplete (sphere results --include-incomplete)")
    if pair_references:
        _pair_references(run_rows, parts, roots, sweep_root)
    scalars = [{"run": row["run"], "task_index": None, "task": None, "metric": key, "value": row[key]}
               for row in run_rows if row["complete"] and "summary" in sources
               for key in _RUN_SCALARS if key in row and row[key] is not None and not pd.isna(row[key])]
    if scalars:
        part = _part(scalars, "summary")
        part["run"] = np.asarray([r["run"] for r in scalars], dtype=object)
        parts.append(part)
    runs_frame = pd.DataFrame(run_rows)
    config_cols = [c for c in runs_frame.columns if "." in c and not c.startswith("cw.") or c in _TOP_LEVEL_FIELDS]
    varying = [c for c in config_cols if runs_frame[c].astype(str).nunique(dropna=False) > 1]
    constant = {c: _plain(runs_frame[c].iloc[0]) for c in config_cols if c not in varying}
    long = _stack(parts)
    long["value"] = pd.to_numeric(long["value"], errors="coerce").astype("float64")
    for col in ("env_step", "task_index", "eval_task_index"):
        long[col] = pd.to_numeric(long[col], errors="coerce").astype("Int64")
    long["task_end"] = pd.to_numeric(long["task_end"], errors="coerce").astype("Float64").astype("boolean")
    for col in ("run", "source", "task", "eval_task", "metric"):
        long[col] = long[col].astype("category")
    if varying:
        cell = runs_frame.set_index("run")[varying]
        long = long.join(cell, on="run")
        for col in ["run", *varying]:
            if long[col].dtype == object:
                long[col] = long[col].astype("category")
    return Results(runs=runs_frame, long=long, constant_config=constant, root=root)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
