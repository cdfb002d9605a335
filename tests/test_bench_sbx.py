"""The SBX comparison: env resolution, config mapping and report (no sbx/torch needed) plus end-to-end runs when installed."""

import flax.linen as nn
import jax.numpy as jnp
import pytest

from sphere_rl import envs
from sphere_rl.config import Config
from sphere_rl.experiments import bench, bench_sbx
from sphere_rl.experiments.bench_sbx import (
    bench_config,
    bench_env,
    child_environment,
    compare_with_sbx,
    gym_id_of,
    jsonable,
    markdown,
    sbx_available,
    sbx_env_kwargs,
    sbx_kwargs,
)

HAND_WRITTEN = [
    "seed=7",
    "run.tasks=gym:Hopper-v5",
    "net.actor=mlp",
    "net.critic=mlp",
    "net.hidden_sizes=128,64",
    "net.critic_hidden_sizes=32",
    "net.activation=tanh",
    "net.log_std_init=-0.5",
    "ppo.num_envs=8",
    "ppo.n_steps=32",
    "ppo.minibatch_size=128",
    "ppo.n_epochs=3",
    "ppo.gamma=0.98",
    "ppo.gae_lambda=0.9",
    "ppo.clip_range=0.1",
    "ppo.ent_coef=0.01",
    "ppo.vf_coef=0.7",
    "ppo.max_grad_norm=1.5",
    "ppo.lr=0.001",
    "ppo.lr_final=0.001",
    "ppo.adam_eps=1e-7",
    "ppo.kl_mode=none",
    "ppo.target_kl=none",
    "ppo.normalize_advantage=false",
    "ppo.normalize_obs=true",
    "ppo.obs_clip=5.0",
]


def test_sbx_kwargs_maps_every_field():
    cfg = Config().override(HAND_WRITTEN).validate()
    assert sbx_kwargs(cfg) == {
        "learning_rate": 0.001,
        "n_steps": 32,
        "batch_size": 128,
        "n_epochs": 3,
        "gamma": 0.98,
        "gae_lambda": 0.9,
        "clip_range": 0.1,
        "clip_range_vf": None,
        "normalize_advantage": False,
        "ent_coef": 0.01,
        "vf_coef": 0.7,
        "max_grad_norm": 1.5,
        "target_kl": None,
        "seed": 7,
        "device": "cpu",
        "verbose": 0,
        "policy_kwargs": {
            "net_arch": {"pi": [128, 64], "vf": [32]},
            "activation_fn": jnp.tanh,
            "ortho_init": True,
            "log_std_init": -0.5,
            "optimizer_kwargs": {"eps": 1e-7},
        },
    }
    assert sbx_env_kwargs(cfg) == {
        "env_id": "Hopper-v5",
        "n_envs": 8,
        "seed": 7,
        "vec_env_cls": "DummyVecEnv",
        "vec_normalize": {"norm_obs": True, "norm_reward": False, "clip_obs": 5.0, "gamma": 0.98, "epsilon": 1e-8},
    }


def test_activation_is_ours_and_normalisation_off_means_no_vec_normalize():
    cfg = Config().override([*HAND_WRITTEN, "net.activation=relu", "ppo.normalize_obs=false"]).validate()
    assert sbx_kwargs(cfg)["policy_kwargs"]["activation_fn"] is nn.relu
    assert sbx_env_kwargs(cfg)["vec_normalize"] is None
    assert jsonable(sbx_kwargs(cfg))["policy_kwargs"]["activation_fn"] == "relu"


@pytest.mark.parametrize("actor", ["topk_moe", "dense_moe", "ds_moe"])
def test_sbx_kwargs_rejects_moe_actor(actor):
    cfg = Config().override([*HAND_WRITTEN, f"net.actor={actor}"]).validate()
    with pytest.raises(ValueError, match=rf"net\.actor='{actor}'.*dense MLP actor"):
        sbx_kwargs(cfg)


def test_sbx_kwargs_names_every_problem():
    cfg = Config().override(["run.tasks=gym:Hopper-v5", "net.critic=topk_moe", "reg.name=sphere", "ppo.target_kl=0.03"])
    with pytest.raises(ValueError) as err:
        sbx_kwargs(cfg.validate())
    message = str(err.value)
    for name in ("net.actor='topk_moe'", "net.critic='topk_moe'", "reg.name='sphere'", "ppo.kl_mode='adaptive_lr'", "ppo.lr_final"):
        assert name in message


def test_sbx_env_kwargs_needs_one_gym_env():
    with pytest.raises(ValueError, match="one Gymnasium env"):
        sbx_env_kwargs(Config().override(["net.actor=mlp"]))  # default tasks: the arm6 sequence
    with pytest.raises(ValueError, match="JAX-native"):
        sbx_env_kwargs(Config().override(["run.tasks=arm/reach"]))


def test_bench_env_of_a_gymnasium_id():
    assert bench_env("Hopper-v5") == bench_env("gym:Hopper-v5")
    env = bench_env("Hopper-v5")
    assert (env.name, env.task, env.single_env) == ("Hopper-v5", "gym:Hopper-v5", "Hopper-v5")


def test_bench_env_of_a_registry_id_is_the_registry_factory():
    env = bench_env("metaworld/hammer-v3")
    assert (env.name, env.task) == ("metaworld/hammer-v3", "metaworld/hammer-v3")
    assert env.single_env is envs.env_spec("metaworld/hammer-v3").factory  # what envs.make wraps, too
    single = env.single_env()
    try:
        assert single.observation_space.shape == (39,) and single.action_space.shape == (4,)
        obs, _ = single.reset(seed=3)
        assert obs.shape == (39,)
    finally:
        single.close()


@pytest.mark.parametrize("env_id, match", [
    ("arm/reach", "JAX-native"),
    ("arm6", "one Gymnasium env"),  # a sequence of ours
    ("cw10", "one Gymnasium env"),
    ("NoSuchEnv-v0", "Unknown Gymnasium env id"),
    ("metaworld/hammer-v3,metaworld/push-v3", "one Gymnasium env"),
    ("", "one Gymnasium env"),
])
def test_bench_env_refuses_what_sbx_cannot_step(env_id, match):
    with pytest.raises(ValueError, match=match):
        bench_env(env_id)


def test_bench_config_of_a_metaworld_id():
    cfg = bench_config("metaworld/hammer-v3", total_steps=4096, num_envs=8)
    assert cfg.run.tasks == "metaworld/hammer-v3"
    assert cfg.ppo.num_envs == 8 and cfg.net.hidden_sizes == (256, 256, 256) and cfg.net.actor == "mlp"
    sbx_kwargs(cfg)  # no error
    assert sbx_env_kwargs(cfg)["env_id"] == "metaworld/hammer-v3"
    assert sbx_env_kwargs(cfg)["n_envs"] == 8


def test_bench_config_is_sbx_expressible_and_constant_lr():
    cfg = bench_config("Hopper-v5", total_steps=4096, num_envs=8, overrides=["ppo.lr=0.002", "ppo.lr_final=0.0001"])
    assert cfg.run.tasks == "gym:Hopper-v5"
    assert (cfg.ppo.lr, cfg.ppo.lr_final) == (0.002, 0.002)
    assert cfg.ppo.target_kl is None and cfg.net.actor == "mlp" and cfg.reg.name == "none"
    assert cfg.ppo.num_envs == 8 and cfg.run.steps_per_task == 4096
    assert cfg.run.eval_every > 4096 and not cfg.diag.enabled
    assert (cfg.ppo.n_steps, cfg.ppo.minibatch_size, cfg.ppo.n_epochs) == (16, 64, 10)  # our defaults, both sides
    assert cfg.net.hidden_sizes == (256, 256, 256) and cfg.net.activation == "relu"
    sbx_kwargs(cfg)  # no error
    assert bench_config("gym:Humanoid-v5", 4096, 8).run.tasks == "gym:Humanoid-v5"
    assert gym_id_of("gym:Hopper-v5") == gym_id_of("Hopper-v5") == "Hopper-v5"


def test_child_environment_has_no_compilation_cache(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/somewhere")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = child_environment()
    assert env["SPHERE_JAX_CACHE"] == "off" and "JAX_COMPILATION_CACHE_DIR" not in env
    assert env["OMP_NUM_THREADS"] == "2"  # passed through unchanged, to both sides


def test_timing_record():
    rec = bench_sbx._timing_record(t_build=10.0, t_learn=12.0, t_end=20.0, iteration_ends=[16.0, 18.0, 20.0], batch_size=100)
    assert rec["env_steps"] == 300 and rec["iterations"] == 3
    assert rec["setup_s"] == 2.0 and rec["learn_s"] == 8.0 and rec["total_s"] == 10.0 and rec["first_iteration_s"] == 4.0
    assert rec["end_to_end_steps_per_s"] == 30.0 and rec["learn_steps_per_s"] == 37.5
    assert rec["steady_s"] == 4.0 and rec["steady_steps"] == 200 and rec["steady_steps_per_s"] == 50.0
    single = bench_sbx._timing_record(0.0, 1.0, 2.0, [2.0], 10)
    assert single["steady_steps_per_s"] is None


def _side(e2e, steady, total, first):
    return {"end_to_end_steps_per_s": e2e, "learn_steps_per_s": e2e, "steady_steps_per_s": steady, "total_s": total,
            "setup_s": 1.0, "learn_s": total - 1.0, "first_iteration_s": first}


def test_markdown_renders_hand_made_result():
    result = {
        "machine": {"processor": "x86_64", "cpu_count": 2, "jax": "0.10.2", "time": "2026-01-01T00:00:00"},
        "versions": {"sbx-rl": "0.28.0", "stable-baselines3": "2.9.2", "torch": "2.13.0", "mujoco": "3.3.0"},
        "env_id": "Hopper-v5",
        "settings": {"env_steps": 32768, "num_envs": 16, "n_steps": 16, "minibatch_size": 64, "n_epochs": 10,
                     "hidden_sizes": [256, 256, 256], "activation": "relu", "normalize_obs": True, "repeats": 3},
        "ours": {"median": _side(1200.0, 1500.0, 27.3, 7.25)},
        "sbx": {"median": _side(1000.0, 1000.0, 32.8, 8.0)},
        "ratio_ours_over_sbx": {"end_to_end_steps_per_s": 1.2, "steady_steps_per_s": 1.5, "learn_steps_per_s": 1.2},
        "raw": {"raw_sync_vector_env": {"steps_per_s": 5381.2}, "raw_dummy_vec_env": {"steps_per_s": 6044.0}},
        "ratio_ours_over_raw": {"end_to_end_steps_per_s": 0.223, "steady_steps_per_s": 0.279},
    }
    text = markdown(result)
    assert "sbx-rl 0.28.0, stable-baselines3 2.9.2, torch 2.13.0, mujoco 3.3.0" in text
    assert "**Hopper-v5**: 32,768 env steps, 16 envs x 16 steps, minibatch 64, 10 epochs, MLP 256x256x256 relu" in text
    assert "| | ours (sphere_rl) | SBX | ours / SBX | ours / raw |" in text
    assert "| env-steps/s end to end (compile included) | 1,200 | 1,000 | 1.20 | 0.22 |" in text
    assert "| env-steps/s steady state (after iteration 1) | 1,500 | 1,000 | 1.50 | 0.28 |" in text
    assert "| wall s (setup + training) | 27.3 | 32.8 | | |" in text
    assert "| first iteration s (compiles) | 7.2 | 8.0 | | |" in text
    assert "gymnasium SyncVectorEnv 5,381, SB3 DummyVecEnv 6,044 env-steps/s" in text
    # missing steady state (one iteration) and no raw rows still render
    result["ours"]["median"]["steady_steps_per_s"] = None
    result["ratio_ours_over_sbx"]["steady_steps_per_s"] = None
    del result["raw"], result["ratio_ours_over_raw"]
    text = markdown([result, result])
    assert "| env-steps/s steady state (after iteration 1) | n/a | 1,000 | n/a | n/a |" in text
    assert text.count("**Hopper-v5**") == 2 and "Simulator alone" not in text


def test_ratio_over_raw_uses_the_sync_vector_env_rate():
    ours = _side(1200.0, 1500.0, 27.3, 7.25)
    raw = {"raw_sync_vector_env": {"steps_per_s": 3000.0}, "raw_dummy_vec_env": {"steps_per_s": 6000.0}}
    assert bench_sbx._ratio_over_raw(ours, raw) == {"end_to_end_steps_per_s": 0.4, "steady_steps_per_s": 0.5}
    ours["steady_steps_per_s"] = None
    assert bench_sbx._ratio_over_raw(ours, {})["steady_steps_per_s"] is None


def test_sbx_available_is_a_bool():
    assert isinstance(sbx_available(), bool)


@pytest.mark.slow
@pytest.mark.skipif(not sbx_available(), reason="needs the bench extra (sbx-rl, stable-baselines3, torch, mujoco)")
def test_tiny_comparison_end_to_end():
    small = ["net.hidden_sizes=32,32", "net.critic_hidden_sizes=32,32", "ppo.n_epochs=2"]
    result = compare_with_sbx("Hopper-v5", total_steps=256, num_envs=4, repeats=1, overrides=small, verbose=False)
    for side in ("ours", "sbx"):
        (run,) = result[side]["runs"]
        assert run["env_steps"] == 256 and run["iterations"] == 4 and run["batch_size"] == 64
        assert run["steady_steps_per_s"] > 0 and run["end_to_end_steps_per_s"] > 0
        assert run["total_s"] >= run["learn_s"] > 0
    assert result["sbx"]["runs"][0]["threads"]["torch_num_threads"] >= 1
    assert result["ours"]["runs"][0]["threads"]["torch_imported"] is False
    assert result["sbx_kwargs"]["policy_kwargs"]["net_arch"] == {"pi": [32, 32], "vf": [32, 32]}
    assert result["ratio_ours_over_sbx"]["steady_steps_per_s"] > 0
    assert set(result["raw"]) == {"raw_sync_vector_env", "raw_dummy_vec_env"}
    assert "**Hopper-v5**: 256 env steps" in markdown(result)


@pytest.mark.slow
@pytest.mark.skipif(not sbx_available(), reason="needs the bench extra (sbx-rl, stable-baselines3, torch, mujoco)")
def test_tiny_metaworld_comparison_end_to_end():
    small = ["net.hidden_sizes=32,32", "net.critic_hidden_sizes=32,32", "ppo.n_epochs=2", "ppo.minibatch_size=16"]
    result = compare_with_sbx("metaworld/hammer-v3", total_steps=64, num_envs=2, repeats=1, overrides=small, verbose=False)
    assert result["env_id"] == "metaworld/hammer-v3" and result["config"]["run"]["tasks"] == "metaworld/hammer-v3"
    for side in ("ours", "sbx"):
        (run,) = result[side]["runs"]
        assert run["env_steps"] == 64 and run["iterations"] == 2 and run["batch_size"] == 32
        assert run["steady_steps_per_s"] > 0
    assert result["ours"]["runs"][0]["vector_env"] == "SyncVectorEnv"
    assert result["sbx_env"]["env_id"] == "metaworld/hammer-v3" and result["sbx_env"]["n_envs"] == 2
    assert set(result["raw"]) == {"raw_sync_vector_env", "raw_dummy_vec_env"}
    assert result["ratio_ours_over_raw"]["steady_steps_per_s"] > 0
    assert "**metaworld/hammer-v3**: 64 env steps" in markdown(result)


def test_run_sbx_bench_checks_every_env_before_measuring(monkeypatch):
    monkeypatch.setattr(bench_sbx, "compare_with_sbx", lambda *a, **k: pytest.fail("measured before checking the ids"))
    with pytest.raises(ValueError, match="JAX-native"):
        bench_sbx.run_sbx_bench(env_ids=("metaworld/hammer-v3", "arm/reach"), out=None)


def test_compare_without_extra_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bench_sbx, "sbx_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"constraints-bench\.txt"):
        compare_with_sbx("Hopper-v5", total_steps=256, num_envs=4)


def test_bench_markdown_renders_the_update_table():
    from sphere_rl.experiments.bench import BENCH_SUITES, DEFAULT_BENCH_SUITES, bench_markdown

    assert set(BENCH_SUITES) == {"update", "ntk", "sbx", "metaworld", "sweep", "seeds", "methods"}
    assert set(DEFAULT_BENCH_SUITES) == {"update", "ntk", "sbx"}  # metaworld, sweep and seeds are opt-in
    row = {"actor": "topk_moe sparse", "n_experts": 10, "n_epochs": 10, "minibatch_steps": 320, "seconds": 2.0,
           "sphere_seconds": 2.1, "sphere_overhead_pct": 5.0, "vs_topk_dense_masked": 0.5, "optimizer_floor_seconds": 0.8}
    results = {"machine": {"processor": "x86_64", "cpu_count": 2, "devices": ["cpu:0"], "jax": "0.10.2", "time": "t"},
               "update_phase": [row], "dense_update": {"seconds": 0.5}}
    text = bench_markdown(results)
    assert "| topk_moe sparse | 10 | 2.00 | 0.50x | 2.10 | +5.0 % | 0.80 |" in text
    assert "| dense 3x256 (official PPO) | | 0.50 |" in text
    assert "320 minibatch steps" in text


def _fabricated_result(env_id):
    return {
        "machine": {"processor": "x86_64", "cpu_count": 2, "jax": "0.10.2", "time": "t"},
        "versions": {},
        "env_id": env_id,
        "settings": {"env_steps": 20480, "num_envs": 16, "n_steps": 16, "minibatch_size": 64, "n_epochs": 10,
                     "hidden_sizes": [256, 256, 256], "activation": "relu", "normalize_obs": True, "repeats": 1},
        "ours": {"median": _side(900.0, 1000.0, 22.0, 3.0)},
        "sbx": {"median": _side(400.0, 450.0, 51.0, 4.0)},
        "ratio_ours_over_sbx": {"end_to_end_steps_per_s": 2.25, "steady_steps_per_s": 2.22},
        "raw": {"raw_sync_vector_env": {"steps_per_s": 1500.0}},
        "ratio_ours_over_raw": {"end_to_end_steps_per_s": 0.6, "steady_steps_per_s": 0.67},
    }


def test_metaworld_suite_runs_hammer_and_renders(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run_sbx_bench(env_ids, quick, repeats, out):
        calls.append((tuple(env_ids), quick, repeats, out))
        return [_fabricated_result(env_id) for env_id in env_ids]

    monkeypatch.setattr(bench_sbx, "sbx_available", lambda: True)
    monkeypatch.setattr(bench_sbx, "run_sbx_bench", fake_run_sbx_bench)
    results = bench.run_bench(out=str(tmp_path), quick=True, suites=("metaworld",))
    assert calls == [(("metaworld/hammer-v3",), True, 1, None)]
    assert "sbx" not in results and results["suites"] == ["metaworld"]
    text = bench.bench_markdown(results)
    assert "**metaworld/hammer-v3**" in text
    assert "| env-steps/s steady state (after iteration 1) | 1,000 | 450 | 2.22 | 0.67 |" in text
    assert "**metaworld/hammer-v3**" in capsys.readouterr().out


def test_metaworld_suite_skips_without_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_sbx, "sbx_available", lambda: False)
    results = bench.run_bench(out=str(tmp_path), quick=True, suites=("metaworld",))
    assert "metaworld" not in results
    assert "metaworld suite skipped: install the bench extra" in capsys.readouterr().out


@pytest.mark.parametrize("argv, suites", [
    (["bench"], ("update", "ntk", "sbx")),
    (["bench", "--suite", "metaworld"], ("metaworld",)),
    (["bench", "--suite", "sbx", "--suite", "metaworld"], ("sbx", "metaworld")),
])
def test_cli_bench_leaves_metaworld_out_unless_asked(monkeypatch, argv, suites):
    from sphere_rl import cli

    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda **kwargs: seen.update(kwargs))
    args = cli.build_parser().parse_args(argv)
    assert args.func(args) == 0
    assert seen["suites"] == suites


def test_bench_markdown_renders_the_seeds_table():
    from sphere_rl.experiments.bench import bench_markdown

    seeds = {"tasks": "arm2", "steps_per_task": 102400, "single_thread": False, "seeds": 8,
             "one": {"wall_s": 10.0, "iteration_s": 0.05, "peak_rss_gib": 0.6},
             "many": {"wall_s": 30.0, "iteration_s": 0.25, "peak_rss_gib": 0.9},
             "wall_ratio": 3.0, "iteration_ratio": 5.0, "per_seed_speedup": 8 / 3.0}
    text = bench_markdown({"machine": {"processor": "x86_64", "cpu_count": 2, "devices": ["cpu:0"], "jax": "0.10.2",
                                       "time": "t"}, "seeds": seeds})
    assert "| 8 seeds, one process | 30.0 | 3.00x | 250.0 | 0.90 |" in text
    assert "Per-seed throughput: 2.67x one seed alone." in text
