"""Config: defaults, overrides, round-trip and one clear error per bad field."""

import json

import pytest

from sphere_rl.config import Config, ConfigError, load, preset


def test_defaults_are_the_official_settings():
    cfg = Config()
    p = cfg.ppo
    assert (p.num_envs, p.n_steps, p.minibatch_size, p.n_epochs) == (128, 16, 64, 10)
    assert (p.gamma, p.gae_lambda, p.clip_range, p.ent_coef, p.vf_coef, p.max_grad_norm) == (0.99, 0.95, 0.2, 0.0, 0.5, 0.5)
    assert (p.lr, p.lr_final, p.lr_end_fraction, p.target_kl, p.normalize_obs) == (3e-4, 1e-4, 0.5, 0.03, True)
    # official with target_kl: SBX's KL-adaptive learning rate (rsl_rl constants), not early stopping
    assert (p.kl_mode, p.kl_lr_min, p.kl_lr_max, p.kl_lr_factor, p.kl_lr_at_task_start) == ("adaptive_lr", 1e-5, 1e-2, 1.5, "reset")
    n = cfg.net
    assert (n.actor, n.n_experts, n.top_k, n.hidden_sizes, n.init) == ("topk_moe", 10, 2, (256, 256, 256), "official")
    assert (cfg.reg.mode, cfg.reg.coef, cfg.reg.placement, cfg.reg.form) == ("loss", None, "last", "concat")
    assert (cfg.reg.resolved_coef, cfg.reg.routing_coef, cfg.reg.critic) == (0.05, 0.0, False)
    assert cfg.batch_size == 2048 and cfg.n_minibatches == 32
    cfg.validate()


def test_overrides_coerce_types_and_round_trip(tmp_path):
    cfg = Config().override(["ppo.lr=1e-3", "net.hidden_sizes=64,64", "ppo.kl_mode=none", "ppo.target_kl=none",
                             "run.tensorboard=false", "seed=7", "run.steps_per_task=100_000"])
    assert cfg.ppo.lr == 1e-3 and cfg.net.hidden_sizes == (64, 64) and cfg.ppo.target_kl is None
    assert cfg.run.tensorboard is False and cfg.seed == 7 and cfg.run.steps_per_task == 100_000
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert load(str(path)) == cfg
    assert hash(cfg) == hash(Config.from_dict(json.loads(cfg.to_json())))


@pytest.mark.parametrize("override, field", [
    ("net.top_k=11", "net.top_k"),
    ("ppo.lr=-1", "ppo.lr"),
    ("run.tasks=arm/does-not-exist", "run.tasks"),
    ("net.actor=transformer", "net.actor"),
    ("reg.name=dropout", "reg.name"),
    ("reg.mode=sometimes", "reg.mode"),
    ("reg.scale=unit", "reg.scale"),
    ("ppo.minibatch_size=100", "ppo.minibatch_size"),
    ("ppo.gamma=1.5", "ppo.gamma"),
    ("ppo.n_epochs=two", "ppo.n_epochs"),
    ("run.protocol=multitask", "run.protocol"),
    ("net.n_experts=0", "net.n_experts"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config().override([override]).validate()


def test_unknown_field_and_section():
    with pytest.raises(ConfigError, match=r"ppo\.learning_rate"):
        Config().override(["ppo.learning_rate=1"])
    with pytest.raises(ConfigError, match="optim"):
        Config().override(["optim.lr=1"])
    with pytest.raises(ConfigError, match="section.field=value"):
        Config().override(["ppo.lr"])


def test_missing_config_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("no-such-preset")


def test_every_field_is_documented():
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    cfg = Config()
    sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    assert sections[:5] == ["net", "ppo", "reg", "run", "diag"]  # then one section per method with settings
    for f in dataclasses.fields(cfg):
        if not dataclasses.is_dataclass(getattr(cfg, f.name)):
            assert f"| `{f.name}` |" in doc, f"top-level {f.name} missing from docs/config.md"
    for section in sections:
        assert f"## {section}" in doc
        for f in dataclasses.fields(getattr(cfg, section)):
            assert f"| `{f.name}` |" in doc, f"{section}.{f.name} missing from docs/config.md"


@pytest.mark.parametrize("text, methods, sizes", [
    ('["reset"]', ("reset",), None), ("[reset]", ("reset",), None), ("reset", ("reset",), None), ("[]", (), None),
    ("'reset', 'sphere'", ("reset", "sphere"), None), (None, (), "[64, 64]"), (None, (), "64,64"), (None, (), "(64,64)"),
])
def test_list_fields_read_json_and_plain_comma_lists(text, methods, sizes):
    """A sweep spec's YAML mapping writes lists as JSON (`["reset"]`); the command line writes `[reset]`."""
    overrides = ([f"methods={text}"] if text is not None else []) + ([f"net.hidden_sizes={sizes}"] if sizes else [])
    cfg = Config().override(overrides).validate()
    assert cfg.methods == methods
    assert cfg.net.hidden_sizes == ((64, 64) if sizes else (256, 256, 256))
