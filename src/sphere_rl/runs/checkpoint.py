"""Single-file, checksummed pytree checkpoints and a rotating CheckpointManager with corruption fallback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from sphere_rl.runs.atomic import atomic_write_bytes, to_json_text

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "CheckpointError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "NoValidCheckpointError",
    "CheckpointMismatchError",
    "NonFiniteCheckpointError",
    "encode_checkpoint",
    "nonfinite_leaves",
    "decode_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "CheckpointManager",
]

MAGIC = b"SPHRCKPT"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# magic, format version, meta length, payload length, SHA-256; little-endian. The digest covers
# version 2: the header's first 24 bytes (magic, version, lengths) + meta bytes + payload;
# version 1 (read only): meta bytes + payload, so a changed version field went unnoticed.
_HEADER = struct.Struct("<8sIIQ32s")
HEADER_SIZE = _HEADER.size  # 56 bytes
_DIGESTED = HEADER_SIZE - 32
_CKPT_RE = re.compile(r"^ckpt_(\d{12})\.ckpt$")


class CheckpointError(Exception):
    """Base class for checkpoint errors."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file failed verification (bad magic, truncated, trailing data, checksum mismatch, bad meta)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"corrupt checkpoint {os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


class NoValidCheckpointError(CheckpointError):
    """No checkpoint in a directory could be verified; ``tried`` lists ``(path, reason)`` pairs."""

    def __init__(self, directory: str | os.PathLike[str], tried: list[tuple[Path, str]]) -> None:
        if tried:
            detail = "; ".join(f"{p.name}: {r}" for p, r in tried)
            msg = (f"no valid checkpoint in {os.fspath(directory)}: all {len(tried)} failed verification "
                   f"and were renamed *.corrupt ({detail})")
        else:
            msg = f"no checkpoint in {os.fspath(directory)} (tried none)"
        super().__init__(msg)
        self.directory = Path(directory)
        self.tried = tried


class NonFiniteCheckpointError(CheckpointError, ValueError):
    """Refused to write a checkpoint whose floating-point arrays hold NaN or Inf."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A valid checkpoint does not match the structure, shapes or dtypes of the restore target."""


class CorruptCheckpointWarning(UserWarning):
    """Emitted when a corrupt checkpoint is skipped (and renamed to ``*.corrupt``) during restore."""


def _is_key_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode_leaf(x: Any) -> Any:
    """Typed PRNG key arrays are stored as their raw uint32 key data; everything else as is."""
    return jax.random.key_data(x) if _is_key_array(x) else x


def encode_checkpoint(state: Any, meta: dict[str, Any] | None = None) -> bytes:
    """Serialise ``state`` (a pytree) and ``meta`` (a JSON-able dict) into the checkpoint byte format."""
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    meta_bytes = to_json_text(meta, indent=None).encode("utf-8")
    payload = serialization.to_bytes(jax.tree.map(_encode_leaf, state))
    prefix = _HEADER.pack(MAGIC, FORMAT_VERSION, len(meta_bytes), len(payload), b"\0" * 32)[:_DIGESTED]
    digest = hashlib.sha256(prefix + meta_bytes + payload).digest()
    return prefix + digest + meta_bytes + payload


def nonfinite_leaves(state: Any) -> list[str]:
    """Paths of the floating-point leaves of ``state`` that hold a NaN or an infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if _is_key_array(leaf):
            continue
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad.append(jax.tree_util.keystr(path) or "<root>")
    return bad


def decode_checkpoint(data: bytes, source: str | os.PathLike[str] = "<bytes>") -> tuple[dict[str, Any], bytes]:
    """Verify checkpoint bytes and return ``(meta, payload)``; raise :class:`CorruptCheckpointError` if invalid."""
    if len(data) < HEADER_SIZE:
        raise CorruptCheckpointError(source, f"truncated: expected at least {HEADER_SIZE} bytes, found {len(data)}")
    magic, version, meta_len, payload_len, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpointError(source, f"bad magic {magic!r} (expected {MAGIC!r})")
    expected = HEADER_SIZE + meta_len + payload_len
    body = data[HEADER_SIZE:]
    if version not in READABLE_VERSIONS:
        # A newer writer's file verifies as version 2 does (its digest covers the version): refuse it without
        # renaming it away. Anything else with an unknown version is a damaged header.
        if len(data) == expected and hashlib.sha256(data[:_DIGESTED] + body).digest() == digest:
            raise CheckpointError(f"{os.fspath(source)}: written by a newer sphere-rl (checkpoint format version "
                                  f"{version}; this one reads {', '.join(map(str, READABLE_VERSIONS))})")
        raise CorruptCheckpointError(source, f"damaged header: unknown format version {version}")
    if len(data) < expected:
        raise CorruptCheckpointError(source, f"truncated: expected {expected} bytes, found {len(data)}")
    if len(data) > expected:
        raise CorruptCheckpointError(source, f"trailing data: expected {expected} bytes, found {len(data)}")
    covered = body if version == 1 else data[:_DIGESTED] + body
    if hashlib.sha256(covered).digest() != digest:
        what = "meta + payload" if version == 1 else "header + meta + payload"
        raise CorruptCheckpointError(source, f"checksum mismatch (SHA-256 of {what})")
    try:
        meta = json.loads(body[:meta_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(source, f"unreadable meta JSON: {exc}") from exc
    return meta, body[meta_len:]


def _check_array(path: str, want_shape: tuple[int, ...], want_dtype: Any, got: Any) -> np.ndarray:
    arr = np.asarray(got)
    if arr.shape != tuple(want_shape) or arr.dtype != np.dtype(want_dtype):
        raise CheckpointMismatchError(
            f"leaf {path or '<root>'}: checkpoint has {arr.dtype}{list(arr.shape)}, target has {np.dtype(want_dtype)}{list(want_shape)}"
        )
    return arr


def _restore_leaf(key_path: Any, target: Any, value: Any) -> Any:
    """Give a restored leaf the type, dtype and (for jax arrays) placement of the target leaf."""
    where = jax.tree_util.keystr(key_path)
    if _is_key_array(target):
        data = jax.random.key_data(target)
        arr = _check_array(where, data.shape, data.dtype, value)
        return jax.random.wrap_key_data(arr, impl=jax.random.key_impl(target))
    if isinstance(target, jax.Array):
        arr = _check_array(where, target.shape, target.dtype, value)
        return jax.device_put(arr, target.sharding)
    if isinstance(target, np.ndarray):
        return np.array(_check_array(where, target.shape, target.dtype, value))  # copy: writable, owned
    if isinstance(target, np.generic):
        return _check_array(where, (), target.dtype, value)[()]
    if isinstance(target, (bool, int, float, complex, str, bytes)):
        if type(value) is not type(target):
            raise CheckpointMismatchError(f"leaf {where or '<root>'}: checkpoint has {type(value).__name__}, target has {type(target).__name__}")
        return value
    return value


def _leaf_paths(tree: Any) -> set[str]:
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _restore_payload(payload: bytes, target: Any, source: str | os.PathLike[str]) -> Any:
    try:
        state_dict = serialization.msgpack_restore(payload)
    except Exception as exc:  # checksum passed, so this is a format problem rather than corruption
        raise CheckpointError(f"{os.fspath(source)}: cannot decode payload: {exc}") from exc
    expected = _leaf_paths(serialization.to_state_dict(jax.tree.map(_encode_leaf, target)))
    found = _leaf_paths(state_dict)
    if expected != found:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise CheckpointMismatchError(
            f"{os.fspath(source)}: structure differs from target; missing in checkpoint: {missing[:10]}, not in target: {extra[:10]}"
        )
    try:
        restored = serialization.from_state_dict(target, state_dict)
    except ValueError as exc:
        raise CheckpointMismatchError(f"{os.fspath(source)}: {exc}") from exc
    return jax.tree_util.tree_map_with_path(_restore_leaf, target, restored)


def save_checkpoint(path: str | os.PathLike[str], state: Any, meta: dict[str, Any] | None = None) -> Path:
    """Atomically write ``state`` and ``meta`` to ``path`` in the checkpoint format."""
    return atomic_write_bytes(path, encode_checkpoint(state, meta))


def _target_for(target: Any, meta: dict[str, Any]) -> Any:
    """``target``, or ``target(meta)`` when it is a function: what to restore into may depend on the meta."""
    return target(meta) if callable(target) else target


def load_checkpoint(path: str | os.PathLike[str], target: Any) -> tuple[Any, dict[str, Any]]:
    """Verify and restore one checkpoint file into the structure of ``target`` (a pytree, or a function of
    the checkpoint's meta returning one); return ``(state, meta)``."""
    meta, payload = decode_checkpoint(Path(path).read_bytes(), source=path)
    return _restore_payload(payload, _target_for(target, meta), path), meta


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verify a checkpoint file and return only its meta dict."""
    return decode_checkpoint(Path(path).read_bytes(), source=path)[0]


class CheckpointManager:
    """Rotating ``ckpt_<step:012d>.ckpt`` files in one directory, restoring the newest valid one."""

    def __init__(self, directory: str | os.PathLike[str], keep: int | None = 3) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None (keep all), got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        """The file name used for ``step``."""
        step = int(step)
        if not 0 <= step < 10**12:
            raise ValueError(f"checkpoint step must be in [0, 1e12), got {step}")
        return self.directory / f"ckpt_{step:012d}.ckpt"

    def all_steps(self) -> list[int]:
        """Steps of all checkpoint files present (unverified), ascending."""
        if not self.directory.is_dir():
            return []
        steps = (_CKPT_RE.match(name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in steps if m)

    def latest_step(self) -> int | None:
        """Newest step on disk (unverified), or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> Path:
        """Atomically write the checkpoint for ``step``, then prune all but the newest ``keep``.

        A state with NaN or Inf in a floating-point array is refused (:class:`NonFiniteCheckpointError`):
        nothing is written and nothing pruned, so the newest checkpoint on disk stays a finite one."""
        bad = nonfinite_leaves(state)
        if bad:
            raise NonFiniteCheckpointError(
                f"refusing to write checkpoint step {int(step)}: non-finite values in {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        path = save_checkpoint(self.path_for(step), state, meta)
        if self.keep is not None:
            for old in self.all_steps()[: -self.keep]:
                if old != int(step):
                    try:
                        self.path_for(old).unlink()
                    except FileNotFoundError:
                        pass
        return path

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restore one specific step (no fallback); raises :class:`CorruptCheckpointError` if invalid."""
        return load_checkpoint(self.path_for(step), target)

    def _quarantine(self, path: Path) -> Path:
        dest = path.with_name(path.name + ".corrupt")
        n = 0
        while dest.exists():
            n += 1
            dest = path.with_name(f"{path.name}.corrupt.{n}")
        os.replace(path, dest)
        return dest

    def restore_latest(self, target: Any, max_step: int | None = None) -> tuple[Any, dict[str, Any], int]:
        """Restore the newest checkpoint that verifies, returning ``(state, meta, step)``; ``target`` as in
        :func:`load_checkpoint`.

        Corrupt files (and files holding NaN/Inf, which older versions could write) are reported with
        :class:`CorruptCheckpointWarning`, renamed to ``*.corrupt`` and skipped. ``max_step``: consider only
        checkpoints at or before this step (newer ones are left as they are). Raises :class:`NoValidCheckpointError` if nothing verifies.
        Structure/dtype mismatches with ``target`` raise :class:`CheckpointMismatchError` immediately.
        """
        tried: list[tuple[Path, str]] = []
        for step in reversed(self.all_steps()):
            if max_step is not None and step > max_step:
                continue
            path = self.path_for(step)
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # pruned concurrently
                continue
            try:
                meta, payload = decode_checkpoint(data, source=path)
                restored = _restore_payload(payload, _target_for(target, meta), path)
                bad = nonfinite_leaves(restored)
                if bad:  # written by an older sphere-rl, which did not refuse them
                    raise CorruptCheckpointError(path, f"non-finite values in {', '.join(bad[:3])}")
            except CorruptCheckpointError as exc:
                dest = self._quarantine(path)
                tried.append((path, exc.reason))
                warnings.warn(
                    f"skipping corrupt checkpoint {path} ({exc.reason}); renamed to {dest.name}, falling back to an older one",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
                continue
            return restored, meta, step
        raise NoValidCheckpointError(self.directory, tried)
