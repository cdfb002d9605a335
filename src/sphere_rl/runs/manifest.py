"""Run provenance: package versions, git commit, host, devices, seed, start time and command line."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["CORE_PACKAGES", "build_manifest", "git_commit", "package_versions"]

# distribution names whose versions every manifest records
CORE_PACKAGES: tuple[str, ...] = ("jax", "jaxlib", "flax", "optax", "numpy", "gymnasium")
_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit(path: str | os.PathLike[str]) -> tuple[str | None, bool | None]:
    """``(HEAD sha, dirty)`` of the git work tree containing ``path``; ``(None, None)`` without git/repo/commits.

    ``dirty`` is True when tracked files differ from HEAD (untracked files are ignored).
    """
    path = Path(path)
    cwd = path if path.is_dir() else path.parent
    if not cwd.is_dir():
        return None, None
    sha = _git(["rev-parse", "--verify", "HEAD"], cwd)
    if not sha:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return sha, (None if status is None else bool(status))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions(extra_packages: Iterable[str] = ()) -> dict[str, str | None]:
    """Versions of python, the core packages, sphere_rl and ``extra_packages`` (None when not installed)."""
    from sphere_rl import __version__ as sphere_version

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (*CORE_PACKAGES, *extra_packages):
        versions[dist] = _version(dist)
    versions["sphere_rl"] = sphere_version
    return versions


def _jax_devices() -> tuple[str | None, list[str]]:
    try:
        import jax

        return jax.default_backend(), [str(d) for d in jax.devices()]
    except Exception as exc:  # a broken accelerator setup must not stop a run from recording itself
        return None, [f"<unavailable: {type(exc).__name__}: {exc}>"]


def build_manifest(
    seed: int | None,
    extra: dict[str, Any] | None = None,
    *,
    extra_packages: Iterable[str] = (),
    code_dir: str | os.PathLike[str] | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Provenance dict for a run.

    ``extra`` entries are merged at top level (a clash with a built-in key raises ValueError);
    ``extra_packages`` are further distribution names whose versions are recorded; ``code_dir``
    is where the git commit is looked up (default: the installed sphere_rl source).
    """
    sha, dirty = git_commit(code_dir if code_dir is not None else _PACKAGE_DIR)
    backend, devices = _jax_devices()
    manifest: dict[str, Any] = {
        "seed": seed,
        "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(extra_packages),
        "git": {"commit": sha, "dirty": dirty},
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": backend,
        "jax_devices": devices,
        "command": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
    }
    if extra:
        clash = sorted(set(extra) & set(manifest))
        if clash:
            raise ValueError(f"manifest extra keys clash with built-in keys: {clash}")
        manifest.update(extra)
    return manifest
