"""The `sphere` command line: listing, training a tiny run, eval, resume of a finished run, clear errors."""

import json

import pytest

from sphere_rl.cli import main
from sphere_rl.runs import RunDir

TINY = ["net.n_experts=2", "net.hidden_sizes=8", "net.gate_hidden_sizes=8", "net.critic_hidden_sizes=8",
        "ppo.num_envs=8", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=1", "run.tasks=arm2",
        "run.steps_per_task=128", "run.eval_every=64", "run.log_every=64", "run.checkpoint_every=64",
        "run.eval_episodes=2", "run.progress=false", "run.tensorboard=true"]


def test_envs_and_presets_list(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "arm/reach" in out and "arm6" in out and "gym:" in out
    assert main(["presets"]) == 0
    assert "demo" in capsys.readouterr().out


def test_config_prints_the_resolved_config(tmp_path, capsys):
    assert main(["config", "h1-paper"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["ppo"]["kl_mode"], cfg["ppo"]["target_kl"], cfg["net"]["init"]) == ("adaptive_lr", 0.03, "official")
    assert cfg["run"]["tasks"] == "h1" and cfg["reg"]["coef"] == 0.05  # resolved, not null
    assert main(["config", "h1-paper", "reg.name=sphere", "reg.mode=grad"]) == 0
    reg = json.loads(capsys.readouterr().out)["reg"]
    assert (reg["name"], reg["mode"], reg["coef"]) == ("sphere", "grad", 0.001)
    path = tmp_path / "c.json"
    assert main(["config", "demo", "seed=4"]) == 0
    path.write_text(capsys.readouterr().out)
    assert main(["config", "--config", str(path), "ppo.kl_mode=early_stop"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["seed"] == 4 and again["ppo"]["kl_mode"] == "early_stop"
    assert main(["config", "h1-paper", "ppo.kl_mode=sometimes"]) == 2
    err = capsys.readouterr().err
    assert "ppo.kl_mode" in err and "Traceback" not in err


def test_train_eval_and_resume_finished_run(tmp_path, capsys):
    assert main(["train", "--preset", "demo-quick", *TINY, "--out-dir", str(tmp_path), "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "average success" in out and "arm/permute" in out
    run = RunDir.open(tmp_path / "cli")
    assert run.is_complete
    for name in ("config.json", "manifest.json", "metrics.csv", "eval.csv", "summary.json"):
        assert run.path(name).exists(), name
    assert list(run.path("tb").iterdir()), "TensorBoard events missing"
    manifest = json.loads(run.path("manifest.json").read_text())
    assert manifest["seed"] == 0 and "jax" in json.dumps(manifest) and "resumes" not in manifest
    summary = json.loads(run.path("summary.json").read_text())
    assert len(summary["final_success"]) == 2

    assert main(["eval", str(run.root), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "arm/reach" in out and "average success" in out
    assert list(run.root.glob("eval_*.json"))

    # resuming a finished run says so and touches nothing
    assert main(["train", "--resume", str(run.root)]) == 0
    assert "is complete" in capsys.readouterr().out
    again = json.loads(run.path("summary.json").read_text())
    assert again == summary
    assert json.loads(run.path("manifest.json").read_text()) == manifest  # no resume session recorded


@pytest.mark.parametrize("args, needle", [
    (["train", "net.top_k=99"], "net.top_k"),
    (["train", "ppo.lr=-0.1"], "ppo.lr"),
    (["train", "run.tasks=arm/nope"], "run.tasks"),
    (["train", "--config", "/does/not/exist.json"], "does not exist"),
    (["train", "--preset", "nope"], "unknown preset"),
])
def test_bad_input_gives_one_clear_error(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_resume_of_missing_directory(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "run directory" in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_gives_one_clear_error(tmp_path, capsys):
    """A run whose checkpoints do not fit the agent state (e.g. written before 0.3): exit 2, no traceback."""
    assert main(["train", "--preset", "demo-quick", "--out-dir", str(tmp_path), "--name", "r", *TINY,
                 "run.tensorboard=false"]) == 0
    capsys.readouterr()
    config_path = tmp_path / "r" / "config.json"
    config = json.loads(config_path.read_text())
    config["net"]["hidden_sizes"] = [6]  # the checkpoint's expert kernels no longer fit
    config_path.write_text(json.dumps(config))
    assert main(["eval", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--name", "../escape"], "run.name"),
    (["--name", "a/b"], "run.name"),
    (["run.name=."], "run.name"),
    (["seed=1e30"], "seed"),
    (["seed=18446744073709551616"], "seed"),
    (["net.hidden_sizes=1e30"], "net.hidden_sizes"),
    (["net.n_experts=1e30"], "net.n_experts"),
    (["net.hidden_sizes=100000"], "net.hidden_sizes"),
    (["net.log_std_init=nan"], "net.log_std_init"),
    (["ppo.lr=inf"], "ppo.lr"),
    (["ppo.clip_range=inf"], "ppo.clip_range"),
    (["net.gate_temperature=-inf"], "net.gate_temperature"),
    (["run.tasks=arm/reach,humanoidbench/h1-walk"], "same observation and action sizes"),
])
def test_bad_input_exits_2_naming_the_field_and_leaves_nothing(tmp_path, capsys, args, needle):
    """Issue 16's list of inputs that gave tracebacks or were accepted: each is one line, exit 2, no files."""
    out_dir = tmp_path / "out"
    assert main(["train", "--preset", "demo-quick", "--out-dir", str(out_dir), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()  # nothing left behind


def test_bad_config_and_resume_inputs_exit_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "manifest.json").write_text("{}")
    assert main(["train", "--resume", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["train", "--resume", str(broken), "--name", "x"]) == 2
    assert "--name" in capsys.readouterr().err


def test_overrides_may_come_between_and_after_options(tmp_path, capsys):
    """Dotted overrides split around an option are all applied (argparse's `nargs="*"` alone stops at the option)."""
    assert main(["config", "demo", "seed=3", "--config", str(tmp_path / "c.json"), "run.steps_per_task=2048"]) == 2
    assert "not both" in capsys.readouterr().err  # --config was still recognised among the overrides
    assert main(["config", "demo", "seed=3", "run.steps_per_task=2048"]) == 0
    (tmp_path / "c.json").write_text(capsys.readouterr().out)
    assert main(["config", "ppo.n_epochs=2", "--config", str(tmp_path / "c.json"), "run.tasks=arm/reach"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["seed"], cfg["run"]["steps_per_task"], cfg["ppo"]["n_epochs"], cfg["run"]["tasks"]) == (
        3, 2048, 2, "arm/reach")
    # an override after --out-dir reaches the config: this one is invalid, so the run is refused before it starts
    out_dir = tmp_path / "out"
    assert main(["train", "--preset", "demo-quick", "run.tasks=arm/reach", "--out-dir", str(out_dir),
                 "run.steps_per_task=1"]) == 2
    assert "run.steps_per_task" in capsys.readouterr().err and not out_dir.exists()
    assert main(["sweep", "--preset", "demo-quick", "seed=1", "--seeds", "0-1", "run.steps_per_task=4096",
                 "--dry-run", "--out-dir", str(out_dir)]) == 0
    assert "2 jobs" in capsys.readouterr().out


def test_train_honours_an_override_after_out_dir(tmp_path, capsys):
    *first, last = TINY
    assert main(["train", "--preset", "demo-quick", *first, "--out-dir", str(tmp_path), last, "--name", "split",
                 "run.tasks=arm/reach", "run.tensorboard=false"]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["run"]["tasks"] == "arm/reach" and config["run"]["tensorboard"] is False
    assert config["run"]["out_dir"] == str(tmp_path) and config["run"]["steps_per_task"] == 128
