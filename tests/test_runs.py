"""Tests for sphere_rl.runs: atomic writes, checkpoints, manifest, metric logs and run directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.runs import (
    CheckpointManager,
    CheckpointMismatchError,
    ConfigMismatchError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    MetricsLogger,
    NoValidCheckpointError,
    NotARunDirectoryError,
    RunDir,
    RunExistsError,
    atomic_write_json,
    atomic_write_text,
    build_manifest,
    git_commit,
    load_checkpoint,
    read_checkpoint_meta,
    read_metrics,
    save_checkpoint,
)
from flax import serialization

from sphere_rl.runs.checkpoint import HEADER_SIZE, CheckpointError, NonFiniteCheckpointError


def make_state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "dense": {
                "kernel": jnp.asarray(rng.normal(size=(3, 4)), dtype=jnp.float32),
                "bias": jnp.asarray([3.4e38, -0.0, -1.5, 1e-38], dtype=jnp.float32),
            },
            "counts": np.arange(seed, seed + 5, dtype=np.int32),
        },
        "rng": jax.random.PRNGKey(seed),  # raw uint32 key data
        "np_rng": np.asarray([seed, 2**32 - 1], dtype=np.uint32),
        "lr": 3e-4 * (seed + 1),
        "iteration": seed,
        "ema": np.float32(0.5 + seed),
    }


def assert_bit_identical(a, b) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y)
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert x == y


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_bit_identical(tmp_path: Path) -> None:
    state = make_state(7)
    meta = {"task_index": 2, "step": 1234, "iteration": 9, "name": "x"}
    path = save_checkpoint(tmp_path / "a.ckpt", state, meta)
    assert path.read_bytes()[:8] == b"SPHRCKPT"
    restored, got_meta = load_checkpoint(path, make_state(0))
    assert_bit_identical(state, restored)
    assert restored["rng"].dtype == jnp.uint32
    assert got_meta == meta
    assert read_checkpoint_meta(path) == meta
    # restored numpy arrays are writable copies, jax arrays are jax arrays
    restored["params"]["counts"][0] = 99
    assert isinstance(restored["params"]["dense"]["kernel"], jax.Array)


def test_checkpoint_typed_prng_key_and_containers(tmp_path: Path) -> None:
    state = {"key": jax.random.key(3), "seq": [jnp.zeros(2), (1, 2.5)], "none": None}
    save_checkpoint(tmp_path / "k.ckpt", state)
    target = {"key": jax.random.key(0), "seq": [jnp.ones(2), (0, 0.0)], "none": None}
    restored, meta = load_checkpoint(tmp_path / "k.ckpt", target)
    assert meta == {}
    assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(state["key"]))
    assert restored["seq"][1] == (1, 2.5) and isinstance(restored["seq"][1], tuple)


def test_checkpoint_target_mismatch_raises_without_quarantine(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(1))
    bad_shape = make_state(1)
    bad_shape["params"]["dense"]["kernel"] = jnp.zeros((3, 5), jnp.float32)
    with pytest.raises(CheckpointMismatchError, match="kernel"):
        mgr.restore_latest(bad_shape)
    bad_dtype = make_state(1)
    bad_dtype["params"]["counts"] = np.zeros(5, np.int64)
    with pytest.raises(CheckpointMismatchError, match="int64"):
        mgr.restore_latest(bad_dtype)
    extra_key = {**make_state(1), "new": jnp.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match="new"):
        mgr.restore_latest(extra_key)
    assert mgr.all_steps() == [1]  # a valid file is never renamed away


def _three_checkpoints(directory: Path) -> CheckpointManager:
    mgr = CheckpointManager(directory, keep=3)
    for step in (10, 20, 30):
        mgr.save(step, make_state(step), {"step": step})
    return mgr


def test_truncated_newest_falls_back(tmp_path: Path) -> None:
    mgr = _three_checkpoints(tmp_path)
    newest = mgr.path_for(30)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(CorruptCheckpointWarning, match=r"truncated: expected \d+ bytes, found \d+") as rec:
        state, meta, step = mgr.restore_latest(make_state(0))
    assert str(newest) in str(rec[0].message)
    assert step == 20 and meta == {"step": 20}
    assert_bit_identical(state, make_state(20))
    assert not newest.exists() and newest.with_name(newest.name + ".corrupt").exists()
    assert mgr.latest_step() == 20
    with warnings.catch_warnings():  # the quarantined file is not tried again
        warnings.simplefilter("error")
        assert mgr.restore_latest(make_state(0))[2] == 20


def test_flipped_payload_byte_is_checksum_mismatch(tmp_path: Path) -> None:
    mgr = _three_checkpoints(tmp_path)
    newest = mgr.path_for(30)
    data = bytearray(newest.read_bytes())
    data[-7] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        mgr.restore(30, make_state(0))
    with pytest.warns(CorruptCheckpointWarning, match="checksum mismatch"):
        state, _, step = mgr.restore_latest(make_state(0))
    assert step == 20
    assert_bit_identical(state, make_state(20))


def test_header_only_and_trailing_data_are_corrupt(tmp_path: Path) -> None:
    mgr = _three_checkpoints(tmp_path)
    mgr.path_for(30).write_bytes(mgr.path_for(30).read_bytes()[: HEADER_SIZE - 1])
    mgr.path_for(20).write_bytes(mgr.path_for(20).read_bytes() + b"x")
    with pytest.warns(CorruptCheckpointWarning) as rec:
        _, _, step = mgr.restore_latest(make_state(0))
    messages = [str(w.message) for w in rec]
    assert step == 10
    assert any(f"expected at least {HEADER_SIZE} bytes" in m for m in messages)
    assert any("trailing data" in m for m in messages)


def test_all_corrupt_raises(tmp_path: Path) -> None:
    mgr = _three_checkpoints(tmp_path)
    for step in mgr.all_steps():
        path = mgr.path_for(step)
        path.write_bytes(b"garbage" + path.read_bytes()[7:])
    with pytest.warns(CorruptCheckpointWarning):
        with pytest.raises(NoValidCheckpointError) as exc:
            mgr.restore_latest(make_state(0))
    text = str(exc.value)
    for step in (10, 20, 30):
        assert f"ckpt_{step:012d}.ckpt" in text
    assert "bad magic" in text and len(exc.value.tried) == 3
    assert mgr.all_steps() == []
    assert len(list(tmp_path.glob("*.corrupt"))) == 3
    with pytest.raises(NoValidCheckpointError, match="tried none"):
        CheckpointManager(tmp_path / "empty").restore_latest(make_state(0))


def test_checkpoint_file_round_trips_nan_and_inf_bit_exactly(tmp_path: Path) -> None:
    """The file format stores any bits; only the manager refuses non-finite states."""
    state = make_state(1)
    state["params"]["dense"]["bias"] = jnp.asarray([np.nan, -0.0, np.inf, -np.inf], dtype=jnp.float32)
    save_checkpoint(tmp_path / "x.ckpt", state, {"a": 1})
    restored, meta = load_checkpoint(tmp_path / "x.ckpt", make_state(0))
    assert meta == {"a": 1}
    assert_bit_identical(restored, state)


def test_manager_refuses_nonfinite_state_and_prunes_nothing(tmp_path: Path) -> None:
    mgr = _three_checkpoints(tmp_path)
    bad = make_state(40)
    bad["params"]["dense"]["kernel"] = bad["params"]["dense"]["kernel"].at[1, 2].set(jnp.nan)
    with pytest.raises(NonFiniteCheckpointError, match=r"step 40: non-finite values in \['params'\]\['dense'\]\['kernel'\]"):
        mgr.save(40, bad, {"step": 40})
    assert mgr.all_steps() == [10, 20, 30]
    assert not list(tmp_path.glob(".*.tmp"))


def test_nonfinite_checkpoint_from_an_older_version_is_skipped(tmp_path: Path) -> None:
    """Older versions wrote NaN checkpoints (they verify): restore falls back to the newest finite one."""
    mgr = _three_checkpoints(tmp_path)
    bad = make_state(30)
    bad["params"]["dense"]["bias"] = jnp.full((4,), jnp.inf, jnp.float32)
    save_checkpoint(mgr.path_for(30), bad, {"step": 30})
    with pytest.warns(CorruptCheckpointWarning, match=r"non-finite values in \['params'\]\['dense'\]\['bias'\]"):
        state, meta, step = mgr.restore_latest(make_state(0))
    assert step == 20 and meta == {"step": 20}
    assert_bit_identical(state, make_state(20))
    assert mgr.all_steps() == [10, 20]  # renamed away: later pruning cannot prefer it over finite ones


def _set_version(path: Path, version: int) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = version.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_changed_version_field_is_corruption_and_falls_back(tmp_path: Path) -> None:
    """The digest covers the header: a damaged version field is caught like any other flipped byte."""
    mgr = _three_checkpoints(tmp_path)
    for version in (1, 7):
        _set_version(mgr.path_for(30), version)
        with pytest.raises(CorruptCheckpointError):
            read_checkpoint_meta(mgr.path_for(30))
    with pytest.warns(CorruptCheckpointWarning, match="unknown format version 7"):
        state, _, step = mgr.restore_latest(make_state(0))
    assert step == 20
    assert_bit_identical(state, make_state(20))


def test_version_1_files_still_read_and_newer_versions_are_refused_not_renamed(tmp_path: Path) -> None:
    import hashlib
    import struct

    meta_bytes, payload = b'{"step": 5}', serialization.to_bytes({"x": np.arange(3, dtype=np.float32)})
    v1 = struct.pack("<8sIIQ32s", b"SPHRCKPT", 1, len(meta_bytes), len(payload),
                     hashlib.sha256(meta_bytes + payload).digest()) + meta_bytes + payload
    (tmp_path / "v1.ckpt").write_bytes(v1)
    restored, meta = load_checkpoint(tmp_path / "v1.ckpt", {"x": np.zeros(3, np.float32)})
    assert meta == {"step": 5} and restored["x"].tolist() == [0.0, 1.0, 2.0]

    prefix = struct.pack("<8sIIQ", b"SPHRCKPT", 3, len(meta_bytes), len(payload))
    newer = prefix + hashlib.sha256(prefix + meta_bytes + payload).digest() + meta_bytes + payload
    mgr = CheckpointManager(tmp_path / "c")
    mgr.save(1, {"x": np.zeros(3, np.float32)})
    mgr.path_for(2).write_bytes(newer)
    with pytest.raises(CheckpointError, match="written by a newer sphere-rl .*version 3"):
        mgr.restore_latest({"x": np.zeros(3, np.float32)})
    assert mgr.all_steps() == [1, 2]  # not renamed away


def test_keep_prunes_old_checkpoints(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    assert mgr.latest_step() is None
    for step in range(1, 6):
        mgr.save(step, make_state(step), {"step": step})
        assert mgr.all_steps() == list(range(max(1, step - 1), step + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000000004.ckpt", "ckpt_000000000005.ckpt"]
    mgr.save(3, make_state(3))  # older than the newest two, but just written: kept
    assert mgr.all_steps() == [3, 4, 5]
    assert CheckpointManager(tmp_path, keep=None).save(6, make_state(6)).exists()
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, keep=0)


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_crash_keeps_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.json"
    atomic_write_json(target, {"a": 1})
    original = target.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"a": 2, "big": list(range(1000))})
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "new.txt", "never")
    with pytest.raises(OSError):
        CheckpointManager(tmp_path / "ckpts").save(1, make_state(1))
    monkeypatch.undo()
    assert target.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "config.json"]
    assert list((tmp_path / "ckpts").iterdir()) == []


def test_atomic_write_json_handles_numpy(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "x.json", {"f": np.float32(0.5), "a": np.arange(3), "p": tmp_path, "t": (1, 2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"f": 0.5, "a": [0, 1, 2], "p": str(tmp_path), "t": [1, 2]}


# ---------------------------------------------------------------- metrics logger


def test_logger_rows_roundtrip_and_new_columns(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log("train", {"env_step": 100, "loss": 0.25, "return": np.float32(1.5)})
        log.log("train", {"env_step": 200, "loss": jnp.float32(0.125), "return": 2.0, "lr": 1e-3})
        log.log("train", {"env_step": 300, "return": -1.0, "loss": 0.0625, "flag": True})
        log.log("eval", {"env_step": 200, "task": "walker", "return": 10.0, "note": None})
        assert log.columns("train") == ["env_step", "loss", "return", "lr", "flag"]
    rows = read_metrics(tmp_path / "metrics.csv")
    assert rows == [
        {"env_step": 100, "loss": 0.25, "return": 1.5, "lr": None, "flag": None},
        {"env_step": 200, "loss": 0.125, "return": 2.0, "lr": 1e-3, "flag": None},
        {"env_step": 300, "loss": 0.0625, "return": -1.0, "lr": None, "flag": 1},
    ]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "env_step,loss,return,lr,flag"
    assert read_metrics(tmp_path / "eval.csv") == [{"env_step": 200, "task": "walker", "return": 10.0, "note": None}]
    # a second logger (resume) appends with the same columns
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log("train", {"env_step": 400, "loss": 0.5})
    assert read_metrics(tmp_path / "metrics.csv")[-1] == {"env_step": 400, "loss": 0.5, "return": None, "lr": None, "flag": None}


def test_logger_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = MetricsLogger(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="env_step"):
        log.log("train", {"loss": 1.0})
    with pytest.raises(ValueError, match="scalar"):
        log.log("train", {"env_step": 1, "loss": np.zeros(3)})
    with pytest.raises(ValueError, match="kind"):
        log.log("test", {"env_step": 1})
    log.close()
    with pytest.raises(RuntimeError):
        log.log("train", {"env_step": 1})
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(tmp_path, tensorboard=False, wandb=True)


def test_truncate_after_and_partial_line_repair(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in range(0, 500, 100):
            log.log("train", {"env_step": step, "loss": step / 1000})
            log.log("eval", {"env_step": step, "task": 0, "return": float(step)})
        removed = log.truncate_after("env_step", 250)
        assert removed == {"train": 2, "eval": 2}
        log.log("train", {"env_step": 300, "loss": -1.0})
    assert [r["env_step"] for r in read_metrics(tmp_path / "metrics.csv")] == [0, 100, 200, 300]
    assert [r["env_step"] for r in read_metrics(tmp_path / "eval.csv")] == [0, 100, 200]
    # a crash mid-write leaves an unterminated line: it is dropped, not merged with the next row
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("40")
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        log = MetricsLogger(tmp_path, tensorboard=False)
    log.log("train", {"env_step": 400, "loss": 0.4})
    log.close()
    assert [r["env_step"] for r in read_metrics(tmp_path / "metrics.csv")] == [0, 100, 200, 300, 400]


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(tb_dir), size_guidance={ea_mod.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_logger_tensorboard_scalars_and_purge_on_resume(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as log:
        for step in (0, 10, 20, 30):
            log.log("train", {"env_step": step, "loss": float(step), "phase": "a"})
        log.log("eval", {"env_step": 30, "task": "cheetah", "return": 5.0})
        log.log("eval", {"env_step": 30, "return": 6.0})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    scalars = _scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(0, 0.0), (10, 10.0), (20, 20.0), (30, 30.0)]
    assert scalars["eval/cheetah/return"] == [(30, 5.0)]
    assert scalars["eval/return"] == [(30, 6.0)]
    assert not any("env_step" in t or "phase" in t for t in scalars)
    # resume from step 10: steps 20, 30 are re-run with different values
    with MetricsLogger(tmp_path, resume_step=10) as log:
        for step in (20, 30):
            log.log("train", {"env_step": step, "loss": -float(step)})
    assert _scalars(tmp_path / "tb")["train/loss"] == [(0, 0.0), (10, 10.0), (20, -20.0), (30, -30.0)]
    assert [(r["env_step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.csv")] == [
        (0, 0.0), (10, 10.0), (20, -20.0), (30, -30.0)
    ]


# ---------------------------------------------------------------- manifest


MANIFEST_KEYS = {
    "seed", "start_time", "versions", "git", "hostname", "platform", "cpu_count", "jax_backend", "jax_devices", "command",
}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_manifest_git_inside_and_outside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo, outside = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir()
    outside.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()

    manifest = build_manifest(123, {"experiment": "e1"}, extra_packages=["tensorboardX"], code_dir=repo)
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["seed"] == 123 and manifest["experiment"] == "e1"
    assert manifest["git"] == {"commit": sha, "dirty": False}
    for pkg in ("python", "jax", "jaxlib", "flax", "optax", "numpy", "gymnasium", "sphere_rl", "tensorboardX"):
        assert pkg in manifest["versions"]
    assert manifest["versions"]["jax"] == jax.__version__
    assert manifest["jax_devices"] and manifest["cpu_count"] >= 1
    json.dumps(manifest)

    (repo / "a.py").write_text("x = 2\n")
    assert git_commit(repo) == (sha, True)
    (repo / "untracked.txt").write_text("ignored")
    _git(repo, "checkout", "-q", "a.py")
    assert git_commit(repo) == (sha, False)

    assert git_commit(outside) == (None, None)
    assert build_manifest(0, code_dir=outside)["git"] == {"commit": None, "dirty": None}
    assert git_commit(tmp_path / "does-not-exist") == (None, None)
    with pytest.raises(ValueError, match="clash"):
        build_manifest(0, {"seed": 1}, code_dir=outside)


def test_git_commit_without_git_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert git_commit(tmp_path) == (None, None)


# ---------------------------------------------------------------- run directory


def test_run_dir_create_open_resume(tmp_path: Path) -> None:
    config = {"algo": "ppo", "lr": 3e-4, "layers": (64, 64), "nested": {"k": np.int64(3)}}
    run = RunDir.create(tmp_path, name="r1", config=config, seed=5)
    assert run.root == tmp_path / "r1" and os.fspath(run) == str(tmp_path / "r1")
    assert run.config == {"algo": "ppo", "lr": 3e-4, "layers": [64, 64], "nested": {"k": 3}}
    assert json.loads(run.path("config.json").read_text()) == run.config
    assert MANIFEST_KEYS <= set(run.manifest) and run.seed == 5
    with pytest.raises(RunExistsError):
        RunDir.create(tmp_path, name="r1", config=config, seed=5)
    with pytest.raises(ConfigMismatchError, match="lr"):
        RunDir.create(tmp_path, name="r1", config={**config, "lr": 1e-3}, seed=5, exist_ok=True)
    resumed = RunDir.create(tmp_path, name="r1", config=config, seed=5, exist_ok=True)
    assert len(resumed.manifest["resumes"]) == 1 and resumed.manifest["seed"] == 5

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(RunExistsError, match="not a run directory"):
        RunDir.create(tmp_path, name="junk", config=config, seed=0)
    with pytest.raises(NotARunDirectoryError, match="not a run directory"):
        RunDir.open(tmp_path / "junk")
    with pytest.raises(ValueError):
        RunDir.create(tmp_path, name="../escape", config=config, seed=0)
    with pytest.raises(ValueError, match="outside"):
        run.path("..", "junk")

    opened = RunDir.open(tmp_path / "r1")
    assert opened.config == run.config and not opened.is_complete and opened.summary is None
    opened.write_json("extra/info.json", {"a": 1})
    assert opened.read_json("extra/info.json") == {"a": 1}
    opened.mark_complete({"final_return": 1.0})
    assert RunDir.open(tmp_path / "r1").is_complete
    assert opened.summary == {"final_return": 1.0}

    a = RunDir.create(tmp_path / "auto", config={"x": 1}, seed=0)
    b = RunDir.create(tmp_path / "auto", config={"x": 1}, seed=0)
    assert a.root != b.root and a.name.split("-")[2] == b.name.split("-")[2]
    assert len(a.name.split("-")[2]) == 8


def test_run_dir_checkpoints_and_logger_layout(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, name="r", config={"a": 1}, seed=0, checkpoint_keep=2)
    run.checkpoints.save(5, make_state(5), {"task": 0})
    assert (run.root / "checkpoints" / "ckpt_000000000005.ckpt").is_file()
    with run.logger() as log:
        log.log("train", {"env_step": 5, "loss": 1.0})
        log.log("eval", {"env_step": 5, "return": 1.0})
    names = {p.name for p in run.root.iterdir()}
    assert {"config.json", "manifest.json", "metrics.csv", "eval.csv", "tb", "checkpoints"} <= names
    state, meta, step = RunDir.open(run.root).checkpoints.restore_latest(make_state(0))
    assert step == 5 and meta == {"task": 0}
    assert_bit_identical(state, make_state(5))


def _fake_training(run: RunDir, total: int, crash_at: int | None = None) -> None:
    """Toy loop: log every step, checkpoint every 3 steps; optionally 'crash' after step crash_at."""
    template = {"w": jnp.zeros(2, jnp.float32), "key": jax.random.PRNGKey(0), "it": 0}
    start, resume_step = 0, None
    if run.checkpoints.latest_step() is not None:
        state, meta, resume_step = run.checkpoints.restore_latest(template)
        start = meta["it"] + 1
    else:
        state = {"w": jnp.zeros(2, jnp.float32), "key": jax.random.PRNGKey(run.seed), "it": 0}
    with run.logger(tensorboard=False, resume_step=resume_step) as log:
        for it in range(start, total):
            key, sub = jax.random.split(state["key"])
            w = state["w"] + jax.random.normal(sub, (2,))
            state = {"w": w, "key": key, "it": it}
            log.log("train", {"env_step": (it + 1) * 10, "w0": w[0], "w1": w[1]})
            if it % 3 == 2:
                run.checkpoints.save((it + 1) * 10, state, {"it": it})
            if crash_at is not None and it == crash_at:
                return


def test_resumed_run_csv_equals_uninterrupted(tmp_path: Path) -> None:
    full = RunDir.create(tmp_path, name="full", config={"c": 1}, seed=3)
    _fake_training(full, total=10)
    part = RunDir.create(tmp_path, name="part", config={"c": 1}, seed=3)
    _fake_training(part, total=10, crash_at=6)  # last checkpoint after it=5 (env_step 60), rows up to 70
    assert read_metrics(part.path("metrics.csv"))[-1]["env_step"] == 70
    _fake_training(RunDir.open(part.root), total=10)
    assert part.path("metrics.csv").read_bytes() == full.path("metrics.csv").read_bytes()


# ----------------------------------------------------------------------------- the writer lock
_HOLD_RUN = ("import sys, time; from sphere_rl.runs import RunDir; l = RunDir.open(sys.argv[1]).lock('holder').acquire();"
             " print('held', flush=True); time.sleep(60)")


def test_run_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    import signal
    import subprocess
    import sys

    from sphere_rl.runs.run_dir import RunInUseError

    run = RunDir.create(tmp_path, name="r", config={"a": 1}, seed=0)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_RUN, str(run.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}") as err:
            run.lock("second").acquire()
        assert "holder" in str(err.value)
        with pytest.raises(RunInUseError):  # a resume through create is refused too, nothing written
            RunDir.create(tmp_path, name="r", config={"a": 1}, seed=0, exist_ok=True)
        assert "resumes" not in run.manifest
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with run.lock("after the crash"):  # the kernel released it: no stale lock
            pass
    finally:
        holder.kill()


def test_two_lock_objects_exclude_each_other_in_one_process(tmp_path):
    from sphere_rl.runs.run_dir import RunInUseError

    run = RunDir.create(tmp_path, name="r", config={"a": 1}, seed=0)
    with run.lock("first"):
        with pytest.raises(RunInUseError):
            run.lock("second").acquire()
        assert RunDir(run.root).lock("probe") is not None


_CREATE = ("import sys; from sphere_rl.runs import RunDir\n"
           "try:\n    RunDir.create(sys.argv[1], name='same', config={'a': 1}, seed=0); print('created')\n"
           "except Exception as e:\n    print(type(e).__name__)")


def test_concurrent_create_of_one_name_has_one_winner(tmp_path):
    import subprocess
    import sys

    for trial in range(5):
        out = tmp_path / f"t{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, str(out)], stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
        results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert results.count("created") == 1, results
        assert set(results) - {"created"} <= {"RunExistsError", "RunInUseError"}, results


def test_stale_temp_files_are_removed(tmp_path):
    run = RunDir.create(tmp_path, name="r", config={"a": 1}, seed=0)
    (run.root / ".metrics.csv.abc.tmp").write_text("x")
    (run.root / "checkpoints").mkdir()
    (run.root / "checkpoints" / ".ckpt_000000000100.ckpt.def.tmp").write_text("x")
    removed = run.remove_stale_temp_files()
    assert len(removed) == 2 and not list(run.root.rglob("*.tmp"))


def test_summary_json_is_strict_json(tmp_path):
    import json
    import math

    run = RunDir.create(tmp_path, name="r", config={"a": 1}, seed=0)
    run.mark_complete({"forward_transfer": math.nan, "curve": [1.0, math.inf, -math.inf], "nested": {"x": math.nan}})

    def refuse(constant):
        raise ValueError(f"bare {constant} in summary.json")

    data = json.loads(run.path("summary.json").read_text(), parse_constant=refuse)
    assert data == {"forward_transfer": None, "curve": [1.0, None, None], "nested": {"x": None}}
