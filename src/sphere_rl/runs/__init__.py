"""Run directories: atomic files, checksummed checkpoints, provenance manifests and metric logs."""

from sphere_rl.runs.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, json_default
from sphere_rl.runs.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CheckpointMismatchError,
    NonFiniteCheckpointError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    NoValidCheckpointError,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from sphere_rl.runs.logger import MetricsLogger, read_metrics
from sphere_rl.runs.manifest import build_manifest, git_commit, package_versions
from sphere_rl.runs.run_dir import ConfigMismatchError, NotARunDirectoryError, RunDir, RunExistsError, config_hash

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_default",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "NonFiniteCheckpointError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "NoValidCheckpointError",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
    "MetricsLogger",
    "read_metrics",
    "build_manifest",
    "git_commit",
    "package_versions",
    "ConfigMismatchError",
    "NotARunDirectoryError",
    "RunDir",
    "RunExistsError",
    "config_hash",
]
