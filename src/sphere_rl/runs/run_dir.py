"""RunDir: one directory per training run holding config, manifest, logs, checkpoints and summary."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from sphere_rl.runs.atomic import atomic_write_json, to_json_text
from sphere_rl.runs.checkpoint import CheckpointManager
from sphere_rl.runs.lock import FileLock, LockHeldError
from sphere_rl.runs.logger import MetricsLogger
from sphere_rl.runs.manifest import build_manifest

__all__ = ["RunDir", "RunExistsError", "NotARunDirectoryError", "ConfigMismatchError", "RunInUseError",
           "config_hash", "LOCK_FILE"]

CONFIG_FILE, MANIFEST_FILE, SUMMARY_FILE = "config.json", "manifest.json", "summary.json"
LOCK_FILE = ".lock"
"""Held (an OS lock, released when the process dies) by whoever writes the run: `Runner.run`, `RunDir.create`."""


class RunInUseError(RuntimeError):
    """Another live process is writing this run directory."""

    def __init__(self, root: Path, holder: dict[str, Any]):
        self.root, self.holder = root, holder
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
               + (f" ({holder['purpose']})" if holder.get("purpose") else "")) if holder else "another process"
        super().__init__(f"run directory {root} is in use by {who}; wait for it to finish or stop it first")


class RunExistsError(FileExistsError):
    """The requested run directory already holds a run (pass ``exist_ok=True`` to resume it)."""


class NotARunDirectoryError(FileNotFoundError):
    """The path has no config.json, so it is not a run directory."""


class ConfigMismatchError(ValueError):
    """Resuming a run with a config that differs from the stored one."""


def _normalise(config: dict[str, Any]) -> Any:
    """The config exactly as it will read back from config.json (tuples -> lists, numpy -> python...)."""
    return json.loads(to_json_text(config))


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_null(v) for v in obj]
    return obj


def config_hash(config: dict[str, Any], length: int = 8) -> str:
    """Short stable hex hash of a config (key order independent)."""
    canonical = to_json_text(config, indent=None, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix or '<root>'}: stored {a!r} != given {b!r}"]


class RunDir:
    """Handle to ``<out_dir>/<run_name>/``; build it with :meth:`create` or :meth:`open`."""

    def __init__(self, root: str | os.PathLike[str], checkpoint_keep: int | None = 3) -> None:
        self.root = Path(root)
        self.checkpoint_keep = checkpoint_keep
        self._config: dict[str, Any] | None = None
        self._checkpoints: CheckpointManager | None = None

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def name(self) -> str:
        """The run name (last path component)."""
        return self.root.name

    @classmethod
    def create(
        cls,
        out_dir: str | os.PathLike[str],
        *,
        config: dict[str, Any],
        seed: int | None,
        name: str | None = None,
        exist_ok: bool = False,
        checkpoint_keep: int | None = 3,
        manifest_extra: dict[str, Any] | None = None,
    ) -> "RunDir":
        """Create a run directory, writing config.json and manifest.json.

        ``name`` defaults to ``<UTC YYYYmmdd-HHMMSS>-<config hash>`` (suffixed ``-1``, ``-2``... on a clash).
        An existing run is refused with :class:`RunExistsError` unless ``exist_ok`` (resume), in which case
        the stored config must equal ``config`` (else :class:`ConfigMismatchError`) and the new session
        is appended to the manifest's ``resumes`` list.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        normalised = _normalise(config)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if name is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            base, n = f"{stamp}-{config_hash(normalised)}", 0
            while True:
                root = out / (base if n == 0 else f"{base}-{n}")
                try:
                    root.mkdir()
                    break
                except FileExistsError:
                    n += 1
        else:
            if not name or name in (".", "..") or "/" in name or os.sep in name:
                raise ValueError(f"invalid run name {name!r}")
            root = out / name
            leftovers = lambda p: p.name == LOCK_FILE or (p.name.startswith(".") and p.name.endswith(".tmp"))
            if not (root / CONFIG_FILE).exists() and root.exists() and not all(map(leftovers, root.iterdir())):
                raise RunExistsError(f"{root} exists, is not empty and is not a run directory; refusing to write into it")
            root.mkdir(exist_ok=True)
        run = cls(root, checkpoint_keep)
        with run.lock("RunDir.create"):  # two processes creating the same name: exactly one wins
            if (root / CONFIG_FILE).exists():
                if name is None or not exist_ok:
                    raise RunExistsError(f"run directory {root} already exists; pass exist_ok=True to resume it")
                diff = _diff_keys(run.config, normalised)
                if diff:
                    raise ConfigMismatchError(f"cannot resume {root}: config differs: " + "; ".join(diff[:20]))
                run.write_manifest(seed, extra=manifest_extra)
                return run
            atomic_write_json(root / CONFIG_FILE, normalised)
            run._config = normalised
            run.write_manifest(seed, extra=manifest_extra)
        return run

    def lock(self, purpose: str = "") -> "_RunLock":
        """The run's writer lock (a context manager; :class:`RunInUseError` when another process holds it)."""
        return _RunLock(self.root, purpose)

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete ``.*.tmp`` files left by a process killed inside an atomic write (call holding the lock)."""
        removed = []
        for path in list(self.root.glob(".*.tmp")) + list(self.root.glob("*/.*.tmp")):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    @classmethod
    def open(cls, path: str | os.PathLike[str], checkpoint_keep: int | None = 3) -> "RunDir":
        """Open an existing run (e.g. to resume or report on it)."""
        root = Path(path)
        if not (root / CONFIG_FILE).is_file():
            raise NotARunDirectoryError(f"not a run directory: {root} ({CONFIG_FILE} missing)")
        return cls(root, checkpoint_keep)

    def path(self, *parts: str | os.PathLike[str]) -> Path:
        """A path inside the run directory (not created); refuses to escape it."""
        p = self.root.joinpath(*parts)
        root = self.root.resolve()
        if not p.resolve().is_relative_to(root):
            raise ValueError(f"{p} is outside the run directory {self.root}")
        return p

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config as stored in config.json."""
        if self._config is None:
            self._config = self.read_json(CONFIG_FILE)
        return self._config

    @property
    def manifest(self) -> dict[str, Any]:
        """Contents of manifest.json."""
        return self.read_json(MANIFEST_FILE)

    @property
    def seed(self) -> int | None:
        """The seed recorded in manifest.json (None if absent)."""
        return self.manifest.get("seed") if self.path(MANIFEST_FILE).exists() else None

    @property
    def checkpoints(self) -> CheckpointManager:
        """The CheckpointManager for ``checkpoints/``."""
        if self._checkpoints is None:
            self._checkpoints = CheckpointManager(self.path("checkpoints"), keep=self.checkpoint_keep)
        return self._checkpoints

    def read_json(self, name: str | os.PathLike[str]) -> Any:
        """Load a JSON file from the run directory."""
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def write_json(self, name: str | os.PathLike[str], obj: Any) -> Path:
        """Atomically write ``obj`` as JSON to ``name`` inside the run directory."""
        return atomic_write_json(self.path(name), obj)

    def write_manifest(self, seed: int | None, extra: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Write manifest.json (kwargs go to :func:`build_manifest`); on an existing one, append to ``resumes``."""
        manifest = build_manifest(seed, extra, **kwargs)
        path = self.path(MANIFEST_FILE)
        if path.exists():
            try:
                first = self.read_json(MANIFEST_FILE)
                if not isinstance(first, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:  # damaged: keep it aside, start a new history
                aside = path.with_name(MANIFEST_FILE + ".corrupt")
                os.replace(path, aside)
                warnings.warn(f"{path}: unreadable ({exc}); moved to {aside.name}, writing a new manifest",
                              RuntimeWarning, stacklevel=2)
                first = {**manifest, "note": f"the previous manifest was unreadable; kept as {aside.name}"}
            first.setdefault("resumes", []).append(manifest)
            manifest = first
        self.write_json(MANIFEST_FILE, manifest)
        return manifest

    def logger(self, tensorboard: bool = True, **kwargs: Any) -> MetricsLogger:
        """A :class:`MetricsLogger` writing into this run (kwargs: wandb, resume_step, ...)."""
        return MetricsLogger(self.root, tensorboard, **kwargs)

    def mark_complete(self, summary: dict[str, Any]) -> Path:
        """Atomically write summary.json; its presence marks the run complete. NaN and infinities are
        written as ``null`` (JSON has no NaN; strict readers reject a bare ``NaN``)."""
        return self.write_json(SUMMARY_FILE, _finite_or_null(_normalise(summary)))

    @property
    def is_complete(self) -> bool:
        """Whether summary.json exists."""
        return self.path(SUMMARY_FILE).is_file()

    @property
    def summary(self) -> dict[str, Any] | None:
        """Contents of summary.json, or None while the run is incomplete."""
        return self.read_json(SUMMARY_FILE) if self.is_complete else None


class _RunLock:
    """`FileLock` on ``<run>/.lock`` that raises :class:`RunInUseError` and may be entered once per object."""

    def __init__(self, root: Path, purpose: str):
        self.root = root
        self._lock = FileLock(root / LOCK_FILE, purpose=purpose)

    def acquire(self) -> "_RunLock":
        try:
            self._lock.acquire()
        except LockHeldError as err:
            raise RunInUseError(self.root, err.holder) from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "_RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
