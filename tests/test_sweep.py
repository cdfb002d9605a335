"""`sphere sweep`: spec parsing and job ids, the crash-safe job lock, the worker, and real Ray sweeps
(local, 2 CPUs): every job finishes, a killed worker is retried and resumes to the same numbers as an
uninterrupted job, two launches at once never run one job twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sphere_rl.cli import main
from sphere_rl.runs.lock import FileLock, LockHeldError
from sphere_rl.sweeps.launch import running_now
from sphere_rl.sweeps.spec import SpecError, SweepSpec, load_spec, parse_grid_arg, parse_seeds
from sphere_rl.sweeps.sweep_dir import SweepDir
from sphere_rl.sweeps.worker import run_job

TINY = ("net.n_experts=2", "net.top_k=1", "net.hidden_sizes=[16,16]", "net.gate_hidden_sizes=[16]",
        "net.critic_hidden_sizes=[16]", "ppo.num_envs=8", "ppo.n_steps=16", "ppo.minibatch_size=64", "ppo.n_epochs=1",
        "run.tasks=arm/reach,arm/permute", "run.eval_every=1024", "run.log_every=1024", "run.checkpoint_every=1024",
        "run.eval_episodes=2", "run.tensorboard=false", "diag.n_states=16", "diag.probe_steps=2")
"""A 2-task CRL run of a tiny Top-K MoE: 128 env steps per iteration, a checkpoint every 8 iterations."""


def tiny_spec(steps: int = 2048, seeds=(0,), grid=(("reg.name", ("none",)),), name: str = "") -> SweepSpec:
    return SweepSpec(presets=("demo",), grid=grid, seeds=seeds, overrides=(*TINY, f"run.steps_per_task={steps}"),
                     name=name)


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
    """Environment for `sphere sweep` subprocesses: one shared compilation cache, no Ray dashboard noise."""
    env = dict(os.environ)
    env["SPHERE_JAX_CACHE"] = str(tmp_path_factory.mktemp("sweep-jax-cache"))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def write_spec(path: Path, spec: SweepSpec) -> Path:
    import yaml

    data = {"name": spec.name, "preset": list(spec.presets), "overrides": list(spec.overrides),
            "grid": {k: list(v) for k, v in spec.grid}, "seeds": list(spec.seeds)}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def sweep_cmd(spec_file: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sphere_rl.cli", "sweep", str(spec_file), "--dir", str(sweep_dir), *extra]


# ----------------------------------------------------------------------------- spec and job ids
@pytest.mark.parametrize("text, seeds", [
    ("0-4", (0, 1, 2, 3, 4)), ("0,3,7", (0, 3, 7)), ("0-2,10", (0, 1, 2, 10)), (5, (5,)), ([3, 1, 3], (1, 3)),
    ("2", (2,)), (" 1 - 2 ", (1, 2)),
])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("bad", ["", "a", "4-2", "1.5", True, None, "0-99999999999", [-1]])
def test_parse_seeds_rejects(bad):
    with pytest.raises(SpecError, match="seeds"):
        parse_seeds(bad)


def test_parse_grid_keeps_list_values_whole():
    assert parse_grid_arg("reg.name=none,sphere") == ("reg.name", ("none", "sphere"))
    assert parse_grid_arg("net.hidden_sizes=[64,64],[128,128]") == ("net.hidden_sizes", ("[64,64]", "[128,128]"))
    for bad in ("reg.name", "=a,b", "reg.name="):
        with pytest.raises(SpecError):
            parse_grid_arg(bad)


def test_jobs_ids_order_and_validation():
    spec = tiny_spec(seeds=(0, 1), grid=(("reg.name", ("none", "sphere")), ("run.protocol", ("rl", "crl"))))
    jobs = spec.jobs()
    assert len(jobs) == spec.n_cells * 2 == 8
    # seed-major: the first four jobs are seed 0 of every cell
    assert [j.seed for j in jobs] == [0] * 4 + [1] * 4
    assert [(j.cell["reg.name"], j.cell["run.protocol"]) for j in jobs[:4]] == [
        ("none", "rl"), ("none", "crl"), ("sphere", "rl"), ("sphere", "crl")]
    assert len({j.job_id for j in jobs}) == 8
    # ids depend on the resolved config only: same spec, same ids; output location and console don't count
    assert [j.job_id for j in tiny_spec(seeds=(0, 1), grid=spec.grid).jobs()] == [j.job_id for j in jobs]
    moved = SweepSpec(presets=spec.presets, grid=spec.grid, seeds=spec.seeds,
                      overrides=(*spec.overrides, "run.out_dir=elsewhere", "run.progress=false", "run.name=x"))
    assert [j.job_id for j in moved.jobs()] == [j.job_id for j in jobs]
    changed = SweepSpec(presets=spec.presets, grid=spec.grid, seeds=spec.seeds, overrides=(*spec.overrides, "ppo.lr=1e-3"))
    assert not {j.job_id for j in changed.jobs()} & {j.job_id for j in jobs}
    assert jobs[0].config.seed == 0 and jobs[4].config.seed == 1
    assert jobs[2].config.reg.name == "sphere" and jobs[2].config.reg.coef == 0.05  # resolved loss-mode default


@pytest.mark.parametrize("spec_kwargs, message", [
    ({"presets": ("nope",)}, "unknown preset"),
    ({"presets": ("demo",), "grid": (("reg.nam", ("none",)),)}, "reg.nam"),
    ({"presets": ("demo",), "grid": (("net.top_k", ("9",)),)}, "net.top_k"),
    ({"presets": ("demo",), "grid": (("seed", ("1",)),)}, "seeds"),
    ({"presets": ("demo",), "grid": (("reg.name", ("none", "none")),)}, "repeats"),
    ({"presets": ("demo",), "grid": (("ppo.lr", ("3e-4", "0.0003")),)}, "same config"),
    ({"presets": ("demo",), "name": "../x"}, "name"),
])
def test_bad_specs_name_the_problem(spec_kwargs, message):
    with pytest.raises(SpecError, match=message):
        SweepSpec(**spec_kwargs).jobs()


def test_spec_files_yaml_and_toml(tmp_path):
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("name: mine\npreset: demo\noverrides: [run.steps_per_task=4096]\n"
                         "grid:\n  reg.name: [none, sphere]\n  net.hidden_sizes: [[16, 16], [32, 32]]\nseeds: 0-2\n")
    spec = load_spec(yaml_file)
    assert spec.name == "mine" and spec.seeds == (0, 1, 2) and spec.n_cells == 4
    assert spec.jobs()[1].config.net.hidden_sizes == (16, 16) or spec.jobs()[1].config.net.hidden_sizes == (32, 32)
    toml_file = tmp_path / "s.toml"
    toml_file.write_text('preset = "demo"\nseeds = [0, 1]\n[grid]\n"reg.name" = ["none", "sphere"]\n')
    assert load_spec(toml_file).n_cells == 2
    (tmp_path / "bad.yaml").write_text("preset: demo\ngrd: {}\n")
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("preset: [demo\n")
    with pytest.raises(SpecError, match="cannot be parsed"):
        load_spec(tmp_path / "broken.yaml")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_cli_dry_run_and_bad_input(tmp_path, capsys):
    assert main(["sweep", "--preset", "demo", "--grid", "reg.name=none,sphere", "--seeds", "0-2", "--dir",
                 str(tmp_path / "sw"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 jobs (2 cells x 3 seeds)" in out and out.count("  job  ") == 6
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing
    assert main(["sweep", "--preset", "demo", "--grid", "reg.name=nope", "--dir", str(tmp_path / "x")]) == 2
    assert "reg.name" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["sweep", "--preset", "demo", "--seeds", "b", "--dir", str(tmp_path / "x")]) == 2
    assert main(["sweep", "--preset", "demo", "--num-cpus", "0", "--dir", str(tmp_path / "x")]) == 2


# ----------------------------------------------------------------------------- the lock
_HOLD = "import sys, time; from sphere_rl.runs.lock import FileLock; l = FileLock(sys.argv[1], 'test').acquire(); print('held', flush=True); time.sleep(60)"


def test_lock_names_holder_and_dies_with_it(tmp_path):
    path = tmp_path / "job.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = FileLock(path)
        with pytest.raises(LockHeldError) as err:
            lock.acquire()
        assert err.value.holder["pid"] == holder.pid and "purpose" in err.value.holder
        assert lock.is_locked()
        holder.send_signal(signal.SIGKILL)  # a crash: no release, no cleanup
        holder.wait(timeout=10)
        with lock:  # the kernel released it with the process
            assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
        assert not lock.held and not lock.is_locked()
    finally:
        holder.kill()


# ----------------------------------------------------------------------------- the worker, no Ray
def test_worker_runs_skips_and_leaves_busy_jobs_alone(tmp_path):
    spec = tiny_spec()
    (job,) = spec.jobs()
    sweep = SweepDir(tmp_path)
    sweep.register(spec, [job])
    first = run_job(str(tmp_path), job.to_index(), job.config.to_dict())
    assert first["state"] == "done" and first["attempts"] == 1 and not first["resumed"]
    assert (sweep.run_dir(job.job_id) / "summary.json").is_file()
    again = run_job(str(tmp_path), job.to_index(), job.config.to_dict())
    assert again["skipped"] and again["attempts"] == 1  # nothing re-run
    held = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "locks" / f"{job.job_id}.lock")],
                            stdout=subprocess.PIPE, text=True)
    try:
        held.stdout.readline()
        busy = run_job(str(tmp_path), job.to_index(), job.config.to_dict())
        assert busy["state"] == "busy" and busy["holder"]["pid"] == held.pid
    finally:
        held.kill()
        held.wait()


def test_worker_records_a_failed_job(tmp_path):
    spec = tiny_spec()
    (job,) = spec.jobs()
    config = job.config.to_dict()
    config["run"]["tasks"] = "arm/does-not-exist"
    record = run_job(str(tmp_path), job.to_index(), config)
    assert record["state"] == "failed" and "does-not-exist" in record["error"] and record["error_line"]


def test_worker_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    spec = tiny_spec()
    (job,) = spec.jobs()
    reference = run_job(str(tmp_path / "a"), job.to_index(), job.config.to_dict())
    # a run directory with config, manifest and some log rows but no checkpoint: killed early
    sweep = SweepDir(tmp_path / "b")
    run_job(str(tmp_path / "b"), job.to_index(), job.config.to_dict())
    root = sweep.run_dir(job.job_id)
    for name in ("summary.json", "continual_metrics.csv"):
        (root / name).unlink()
    for ckpt in (root / "checkpoints").iterdir():
        ckpt.unlink()
    sweep.write_status(job.job_id, state="running")
    record = run_job(str(tmp_path / "b"), job.to_index(), job.config.to_dict())
    assert record["state"] == "done" and record["resumed"] and record["attempts"] == 2
    for name in ("eval.csv", "metrics.csv", "diagnostics.csv"):
        a = (SweepDir(tmp_path / "a").run_dir(job.job_id) / name).read_text().splitlines()
        b = (root / name).read_text().splitlines()
        assert len(a) == len(b), name  # no duplicated rows from the first attempt
    assert record["average_success"] == reference["average_success"]


def test_launcher_reports_only_this_launchs_attempts():
    # a sweep killed mid-job leaves `running, attempt 2`; the next launch must not print it as its own
    stale = {"state": "running", "attempts": 2, "resumed": True}
    assert not running_now(stale, attempts_before=2)
    assert running_now({**stale, "attempts": 3}, attempts_before=2)
    assert running_now({"state": "running", "attempts": 1}, attempts_before=0)
    assert not running_now({"state": "done", "attempts": 3}, attempts_before=2)
    assert not running_now({}, attempts_before=0)


# ----------------------------------------------------------------------------- real Ray
@pytest.mark.slow
def test_ray_sweep_runs_every_job_and_is_idempotent(tmp_path, sweep_env):
    spec = tiny_spec(seeds=(0, 1), grid=(("reg.name", ("none", "sphere")),), name="tiny")
    spec_file = write_spec(tmp_path / "tiny.yaml", spec)
    sweep_dir = tmp_path / "sw"
    out = subprocess.run(sweep_cmd(spec_file, sweep_dir, "--num-cpus", "2"), env=sweep_env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep = SweepDir.open(sweep_dir)
    jobs = spec.jobs()
    assert {j["job_id"] for j in sweep.jobs} == {j.job_id for j in jobs}  # the index is complete
    assert set(sweep.states().values()) == {"done"}
    for job in jobs:
        record = sweep.status(job.job_id)
        assert record["attempts"] == 1 and record["host"] and record["timing"]["submitted_at"] <= record["timing"]["ready_at"]
        assert f"done     {job.job_id}" in out.stdout
        run_config = json.loads((sweep.run_dir(job.job_id) / "config.json").read_text())
        assert run_config["seed"] == job.seed and run_config["reg"]["name"] == job.cell["reg.name"]
    assert "sweep finished" in out.stdout and "4 done" in out.stdout
    again = subprocess.run(sweep_cmd(spec_file, sweep_dir), env=sweep_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "4 already done" in again.stdout and "Ray:" not in again.stdout
    assert all(sweep.status(j.job_id)["attempts"] == 1 for j in jobs)


@pytest.mark.slow
def test_killed_worker_is_retried_and_resumes_to_the_same_numbers(tmp_path, sweep_env):
    spec = tiny_spec(steps=12288, name="kill")
    (job,) = spec.jobs()
    spec_file = write_spec(tmp_path / "kill.yaml", spec)
    reference = subprocess.run(sweep_cmd(spec_file, tmp_path / "ref", "--num-cpus", "1"), env=sweep_env,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    sweep = SweepDir(tmp_path / "killed")
    launch = subprocess.Popen(sweep_cmd(spec_file, sweep.root, "--num-cpus", "1", "--retries", "2"), env=sweep_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        checkpoints = sweep.run_dir(job.job_id) / "checkpoints"
        while time.monotonic() < deadline and not (checkpoints.is_dir() and any(checkpoints.glob("*.ckpt"))):
            assert launch.poll() is None, launch.stdout.read()
            time.sleep(0.05)
        pid = sweep.status(job.job_id)["pid"]
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-job, after its first checkpoint
        output, _ = launch.communicate(timeout=600)
    finally:
        launch.kill()
    assert launch.returncode == 0, output
    record = sweep.status(job.job_id)
    assert record["state"] == "done" and record["attempts"] == 2 and record["resumed"], record
    assert "resumed" in output and "(attempt 2)" in output
    ref_root, run_root = SweepDir(tmp_path / "ref").run_dir(job.job_id), sweep.run_dir(job.job_id)
    ref_summary = json.loads((ref_root / "summary.json").read_text())
    summary = json.loads((run_root / "summary.json").read_text())
    for key in ("final_success", "final_return", "success_matrix", "ntk_rank", "proxy_rank", "env_steps"):
        assert summary[key] == ref_summary[key], key
    for name in ("eval.csv", "diagnostics.csv"):  # identical rows, none duplicated by the killed attempt
        ref_rows = [line.split(",") for line in (ref_root / name).read_text().splitlines()]
        rows = [line.split(",") for line in (run_root / name).read_text().splitlines()]
        header = ref_rows[0]
        drop = {i for i, col in enumerate(header) if "seconds" in col}  # timings differ
        assert [[c for i, c in enumerate(r) if i not in drop] for r in rows] == \
               [[c for i, c in enumerate(r) if i not in drop] for r in ref_rows], name


@pytest.mark.slow
def test_two_launches_at_once_never_run_a_job_twice(tmp_path, sweep_env):
    spec = tiny_spec(seeds=(0, 1), name="twice")
    spec_file = write_spec(tmp_path / "twice.yaml", spec)
    sweep = SweepDir(tmp_path / "sw")
    cmd = sweep_cmd(spec_file, sweep.root, "--num-cpus", "1")
    launches = [subprocess.Popen(cmd, env=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs
    for job in spec.jobs():
        record = sweep.status(job.job_id)
        assert record["state"] == "done" and record["attempts"] == 1, record
        manifest = json.loads((sweep.run_dir(job.job_id) / "manifest.json").read_text())
        assert "resumes" not in manifest  # one session wrote the run
        ran = [line for o in outputs for line in o.splitlines()
               if f"done     {job.job_id}" in line and "already done" not in line]
        assert len(ran) == 1, outputs  # trained by exactly one launch; the other saw it busy or done
        rows = (sweep.run_dir(job.job_id) / "eval.csv").read_text().splitlines()
        assert len(rows) == len(set(rows))


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/sweeps/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_specs_expand(path):
    spec = load_spec(path)
    jobs = spec.jobs()
    assert spec.name == path.stem and len(jobs) == spec.n_cells * len(spec.seeds) and len(spec.seeds) >= 5


def test_bench_startup_arithmetic():
    """`sphere bench --suite sweep`'s start-up breakdown on hand-made stamps: 3 jobs, 2 CPUs."""
    from sphere_rl.experiments.bench_sweep import _startup, sweep_markdown

    def rec(submitted, entered, ready, started, first, second, finished):
        return {"timing": {"submitted_at": submitted, "entered_at": entered, "ready_at": ready,
                           "training_started_at": started, "first_iteration_at": first,
                           "second_iteration_at": second, "finished_at": finished}}

    records = [rec(0.0, 1.0, 2.0, 6.0, 8.0, 8.5, 50.0),       # first wave: free at submission
               rec(0.0, 1.5, 2.5, 6.5, 8.0, 8.5, 60.0),
               rec(0.0, 51.0, 52.0, 56.0, 57.5, 58.0, 99.0)]  # waits for the first job's CPU (free at 50)
    parts = _startup(records, n_cpus=2)
    assert parts[0] == pytest.approx({"process": 1.0, "build": 1.0, "setup": 4.0, "compile": 1.5, "startup": 3.5})
    assert parts[1]["process"] == pytest.approx(1.5) and parts[1]["compile"] == pytest.approx(1.0)
    assert parts[2]["process"] == pytest.approx(1.0) and parts[2]["startup"] == pytest.approx(1.0 + 1.0 + 1.0)
    result = {"sweep": {"jobs": 3, "cpus": 2, "budget": "demo", "wall_s": 100.0, "ideal_wall_s": 90.0,
                        "overhead_ratio": 100 / 90, "process_median_s": 1.0, "build_median_s": 1.0,
                        "compile_median_s": 1.0, "setup_median_s": 4.0, "startup_median_s": 3.0, "startup_max_s": 3.5},
              "results_load": {"runs": 1000, "rows": 10, "seconds": 9.0},
              "report": {"runs": 100, "build_seconds": 5.0, "size_mb": 6.0, "browser_load_seconds": None}}
    text = "\n".join(sweep_markdown(result))
    assert "1.11x" in text and "3.0 s / 3.5 s" in text and "n/a (no chromium/playwright)" in text


# ----------------------------------------------------------------------------- seed groups in sweeps
def test_seed_groups_put_the_seeds_of_a_cell_in_one_process():
    from sphere_rl.sweeps.launch import seed_groups

    spec = tiny_spec(seeds=(0, 1, 2, 3, 4), grid=(("reg.name", ("none", "sphere")),))
    jobs = spec.jobs()
    groups = seed_groups(jobs, n_cpus=2)  # 10 jobs on 2 CPUs: one group of 5 seeds per cell
    assert sorted(len(g) for g in groups) == [5, 5]
    for group in groups:
        assert len({j.cell["reg.name"] for j in group}) == 1 and len({j.seed for j in group}) == len(group)
    assert sorted(len(g) for g in seed_groups(jobs, n_cpus=8)) == [1, 1, 2, 2, 2, 2]  # 8 CPUs: smaller groups
    assert all(len(g) == 1 for g in seed_groups(jobs, n_cpus=2, seeds_per_process=1))
    assert sorted(len(g) for g in seed_groups(jobs, n_cpus=2, seeds_per_process=3)) == [2, 2, 3, 3]
    host = SweepSpec(presets=("demo",), seeds=(0, 1), overrides=("run.tasks=gym:Pendulum-v1",)).jobs()
    assert [len(g) for g in seed_groups(host, n_cpus=1)] == [1, 1]  # host envs: one process per seed


def test_worker_group_trains_the_seeds_together_and_skips_done_and_busy_jobs(tmp_path):
    from sphere_rl.runs.lock import FileLock
    from sphere_rl.sweeps.worker import run_job_group

    spec = tiny_spec(seeds=(0, 1, 2))
    jobs = spec.jobs()
    sweep = SweepDir(tmp_path)
    sweep.register(spec, jobs)
    # job 0 is done already (trained alone), job 2 is held by another process
    run_job(str(tmp_path), jobs[0].to_index(), jobs[0].config.to_dict())
    holder = FileLock(sweep.root / "locks" / f"{jobs[2].job_id}.lock", purpose="someone else")
    holder.acquire()
    try:
        records = run_job_group(str(tmp_path), [j.to_index() for j in jobs], [j.config.to_dict() for j in jobs])
    finally:
        holder.release()
    assert [r["state"] for r in records] == ["done", "done", "busy"]
    assert records[0]["skipped"] and "group_size" not in records[0]
    records = run_job_group(str(tmp_path), [j.to_index() for j in jobs], [j.config.to_dict() for j in jobs])
    assert [r["state"] for r in records] == ["done", "done", "done"] and records[1]["skipped"]
    assert records[2]["group_size"] == 1 and not records[2].get("skipped")  # the one left, now free
    for job in jobs:
        config = json.loads((sweep.run_dir(job.job_id) / "config.json").read_text())
        assert config["seed"] == job.seed and (sweep.run_dir(job.job_id) / "summary.json").is_file()


def test_worker_group_of_new_jobs_is_one_seed_group(tmp_path):
    from sphere_rl.sweeps.worker import run_job_group

    spec = tiny_spec(seeds=(3, 4))
    jobs = spec.jobs()
    SweepDir(tmp_path).register(spec, jobs)
    records = run_job_group(str(tmp_path), [j.to_index() for j in jobs], [j.config.to_dict() for j in jobs])
    assert [r["state"] for r in records] == ["done", "done"]
    assert all(r["group_size"] == 2 and r["group"] == [j.job_id for j in jobs] for r in records)
    manifest = json.loads((SweepDir(tmp_path).run_dir(jobs[0].job_id) / "manifest.json").read_text())
    assert manifest["seed_group"] == [j.job_id for j in jobs] and "resumes" not in manifest
