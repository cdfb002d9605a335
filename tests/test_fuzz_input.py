"""Property-based fuzzing of bad input with hypothesis (issue 16, item 5): odd configs and CLI invocations.

Layer a, the config schema: `Config().override(...)` / `Config.from_dict` / `load` followed by `.validate()` either
gives a config that survives a JSON round trip or raises `ConfigError` with a one-line message naming a field.

Layer b, the CLI in-process (`sphere_rl.cli.main(argv)`) for subcommands that fail fast: an int exit code or argparse's
SystemExit(2), never another exception; exit 2 comes with ONE stderr line; a failing call leaves nothing behind; and no
agent is ever built (`PPO.init` and `launch` are replaced by a tripwire), so nothing trains or compiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sphere_rl.cli import main
from sphere_rl.config import PRESETS, Config, ConfigError, load


def _n(examples: int) -> int:
    """Examples per test; SPHERE_FUZZ_SCALE=20 fuzzes 20 times longer (the default run takes about 10 s)."""
    return max(1, int(examples * float(os.environ.get("SPHERE_FUZZ_SCALE", "1"))))


def _leaf_fields(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


FIELDS = _leaf_fields(Config)
"""Every leaf field of a Config, dotted: `seed`, `net.actor`, ..., `diag.memory_budget_mb`."""
SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "seed"]
NAMES = FIELDS + SECTIONS

ODD_STRINGS = [
    "", " ", ".", "..", "../x", "a/b", "/", "~", "-", "--", "=", "a=b", "-1", "0", "1", "2", "1.5", "-0", "1e3", "1e400",
    "-1e400", "9" * 40, "nan", "NaN", "inf", "-inf", "none", "null", "None", "true", "false", "yes", "off", "0x10",
    "1_000", "١٢", "[]", "()", "[1,", "(1,2)", "[64,64]", "[[1]]", "1,2,3", ",", "a,,b", "\x00", "a\x00b", "é", "\u202e",
    "a\nb", "\r", "\u2028", "x" * 300, "\\", "gym:", "gym:a\nb", "gym:../x", "gym:NoSuchEnv-v0", "gym:CartPole-v1", "arm6",
    "arm/reach", "arm/reach,humanoidbench/h1-walk", "h1", "cw10", "topk_moe", "ds_moe", "mlp", "sphere", "grad",
    "crl", "rl", "structured", "full", "early_stop", "carry", "per_expert", "all",
]
"""Strings that broke or nearly broke parsers elsewhere, plus valid words so that later fields get reached."""

numbers = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.sampled_from([0, 1, -1, 2, 3, 64, 2**31 - 1, 2**31, -(2**31), 10**400, 1e308, -0.0, 5e-324, 0.5, 1e-300]),
)
strings = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=20), st.from_regex(r"-?[0-9_.eE+]{1,12}", fullmatch=True))
scalars = st.one_of(numbers, strings, st.booleans(), st.none())
values = st.one_of(
    scalars, scalars, st.lists(scalars, max_size=4), st.lists(st.integers(-2, 70_000), max_size=70),
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.none()), scalars, max_size=2),
)
keys = st.one_of(
    st.sampled_from(FIELDS), st.sampled_from(FIELDS),
    st.sampled_from([*SECTIONS, "", ".", "net.", ".seed", "seed.x", "net.actor.x", "bogus", "ppo.bogus", "Net.actor",
                     " net.actor", "net..actor", "run.name.x"]),
    st.text(max_size=12), st.integers(-2, 2), st.none(),
)
value_text = st.one_of(strings, numbers.map(str), st.lists(st.integers(-3, 70_000), max_size=5).map(lambda xs: ",".join(map(str, xs))))
override_strings = st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, value_text), st.text(max_size=15), st.sampled_from(ODD_STRINGS))


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    assert "Traceback" not in text
    return lines[0]


def _check_config(build: typing.Callable[[], Config], offending: list[typing.Any]) -> Config | None:
    """build().validate() gives a config that survives JSON, or a one-line ConfigError naming a field."""
    try:
        cfg = build().validate()
    except ConfigError as err:
        message = _one_line(str(err))
        named = [n for n in NAMES if n in message] + [k for k in map(str, offending) if k and k in message]
        assert named or "override" in message or "config" in message, f"{message!r} names no field"
        return None
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and hash(again) == hash(cfg)
    assert again.validate().resolved().to_json()
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# layer a: the config schema
# ---------------------------------------------------------------------------------------------------------------------

@settings(max_examples=_n(450), deadline=None)
@given(st.dictionaries(keys, values, min_size=1, max_size=4))
def test_config_override_dicts(overrides):
    _check_config(lambda: Config().override(overrides), list(overrides))


@settings(max_examples=_n(250), deadline=None)
@given(st.lists(override_strings, min_size=1, max_size=4), st.sampled_from(sorted(PRESETS)))
def test_config_override_strings(overrides, preset_name):
    base = Config().override(PRESETS[preset_name]["overrides"])
    _check_config(lambda: base.override(overrides), [o.split("=", 1)[0] for o in overrides] + overrides)


json_scalars = st.one_of(st.integers(-(2**40), 2**70), st.floats(allow_nan=False), strings, st.booleans(), st.none())
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
_SECTION_FIELDS = {s: [f.split(".", 1)[1] for f in FIELDS if f.startswith(s + ".")] for s in SECTIONS}
config_dicts = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "seed": json_values,
        **{s: st.one_of(json_values, st.dictionaries(st.sampled_from(_SECTION_FIELDS[s] + ["bogus"]), values, max_size=4))
           for s in SECTIONS},
    }),
)


@settings(max_examples=_n(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config_dicts, st.sampled_from(["json", "text", "bytes"]), st.binary(max_size=40))
def test_config_from_dicts_and_files(tmp_path, data, form, raw):
    _check_config(lambda: Config.from_dict(data), list(data) if isinstance(data, dict) else [])
    path = tmp_path / "config.json"
    if form == "json":
        path.write_text(json.dumps(data))
    elif form == "text":
        path.write_text(json.dumps(data)[:-1] + "}")  # often broken JSON
    else:
        path.write_bytes(raw)
    _check_config(lambda: load(str(path)), [str(path)])


def test_config_examples_found_by_fuzzing():
    """Inputs the fuzzer found that crashed (OverflowError, TypeError) or were accepted and failed later."""
    for overrides, field in [
        ({"ppo.lr": 10**400}, "ppo.lr"),
        ({"reg.coef": -(10**400)}, "reg.coef"),
        ({"run.name": ["a"]}, "run.name"),
        ({"run.name": None}, "run.name"),
        ({"run.tasks": True}, "run.tasks"),
        ({"run.progress": 5}, "run.progress"),
        ({"run.name": "x" * 256}, "run.name"),
        ({"run.name": "a\x00b"}, "run.name"),
        ({"run.name": "\ud800"}, "run.name"),
        ({"run.out_dir": "a/" + "x" * 256}, "run.out_dir"),
        ({"run.out_dir": "a\x00"}, "run.out_dir"),
        ({"run.out_dir": "a/" * 2100}, "run.out_dir"),
        ({"net.hidden_sizes": [8] * 65}, "net.hidden_sizes"),
        ({"net.n_shared": 10**6}, "net.n_shared"),
        ({"diag.n_states": 2**30}, "diag.n_states"),
        ({3: 1}, "3"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            Config().override(overrides).validate()
    for overrides in ([5], [None]):
        with pytest.raises(ConfigError, match="override"):
            Config().override(overrides)


# ---------------------------------------------------------------------------------------------------------------------
# layer b: the CLI in-process
# ---------------------------------------------------------------------------------------------------------------------

class _AgentBuilt(BaseException):
    """Raised by the tripwires: bad input got as far as building an agent or launching a sweep."""


@pytest.fixture
def tripwires(monkeypatch):
    """No agent is built (so nothing compiles or trains) and no sweep launches while the CLI is fuzzed."""
    from sphere_rl.algo.ppo import PPO

    def refuse(*args, **kwargs):
        raise _AgentBuilt("bad input reached agent construction / sweep launch")

    monkeypatch.setattr(PPO, "init", refuse)
    monkeypatch.setattr("sphere_rl.sweeps.launch.launch", refuse)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@contextlib.contextmanager
def _sandbox(base: Path):
    """A fresh empty working directory (relative paths in argv land in it), removed afterwards."""
    work = Path(tempfile.mkdtemp(dir=base))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


def _cli(argv: list[str], capsys, watch: list[Path] = ()) -> tuple[int, str, str]:
    """main(argv): an int or SystemExit(2); exit 2 with one stderr line; on failure the watched trees are unchanged."""
    before = [_tree(p) for p in watch]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
        assert code == 2, f"SystemExit({code!r}) for {argv!r}"
    out, err = capsys.readouterr()
    assert isinstance(code, int) and not isinstance(code, bool), f"{code!r} for {argv!r}"
    if code == 2:
        line = _one_line(err)
        assert line.startswith("sphere"), line
    if code != 0:
        assert [_tree(p) for p in watch] == before, f"{argv!r} left files behind"
    return code, out, err


INVALID = ["ppo.lr=-1", "net.top_k=0", "run.tasks=arm/nope", "seed=-3", "bogus.field=1", "ppo.minibatch_size=3",
           "net.hidden_sizes=[]", "noequals", "run.name=..", "diag.dormant_tau=1", "reg.mode=sometimes",
           "run.steps_per_task=1", "net.actor=", "ppo.gamma=nan", "run.out_dir=a\x00b", "seed=1e40"]
"""Overrides that are invalid whatever comes before them: the last positional of every fuzzed `train`."""

OPTION_TOKENS = ["--preset", "--config", "--name", "--out-dir", "--resume", "--bogus", "-x", "-", "--preset=demo",
                 "--preset=nope", "--name=a/b", "--name=", "--out-dir=", "--config=/", "--name=" + "n" * 300]
train_tokens = st.one_of(override_strings, st.sampled_from(OPTION_TOKENS), st.sampled_from(sorted(PRESETS)))


@settings(max_examples=_n(170), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(train_tokens, max_size=6), st.sampled_from(INVALID), st.sampled_from(sorted(PRESETS) + ["nope", ""]))
def test_cli_train_with_bad_input(tmp_path, capsys, tripwires, tokens, invalid, preset_name):
    with _sandbox(tmp_path) as work:
        argv = ["train", "--preset", preset_name, *tokens, "--out-dir", str(work / "out"), invalid]
        code, _, _ = _cli(argv, capsys, [work])
        assert code == 2


bad_names = st.one_of(st.sampled_from(["..", ".", "a/b", "/", "x" * 256, "é" * 128, "a\x00", "\ud800"]),
                      st.text(min_size=1, max_size=4).map(lambda s: s + "/" + s))
bad_out_dirs = st.sampled_from(["a\x00b", "a/" + "y" * 256, "z/" * 2100, "\udcff\ud800", "FILE", "FILE/sub"])


@settings(max_examples=_n(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.tuples(bad_names, st.none()), st.tuples(st.none(), bad_out_dirs), st.tuples(bad_names, bad_out_dirs)))
def test_cli_train_with_a_bad_name_or_out_dir(tmp_path, capsys, tripwires, name_and_out):
    """Only `--name` / `--out-dir` is wrong (the config is the tiny valid demo): refused before anything is written."""
    name, out_dir = name_and_out
    with _sandbox(tmp_path) as work:
        (work / "FILE").write_text("not a directory")
        argv = ["train", "--preset", "demo-quick", "run.steps_per_task=2048"]
        argv += ["--name", name] if name is not None else []
        argv += ["--out-dir", out_dir] if out_dir is not None else []
        code, _, _ = _cli(argv, capsys, [work])
        assert code == 2


@settings(max_examples=_n(170), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.none(), st.sampled_from(sorted(PRESETS)), strings), st.lists(override_strings, max_size=4),
       st.sampled_from([None, "json", "garbage", "dir", "missing"]), config_dicts)
def test_cli_config(tmp_path, capsys, tripwires, preset_name, overrides, config_file, data):
    with _sandbox(tmp_path) as work:
        argv = ["config", *([preset_name] if preset_name is not None else []), *overrides]
        if config_file is not None:
            path = work / "c.json"
            if config_file == "json":
                path.write_text(json.dumps(data))
            elif config_file == "garbage":
                path.write_bytes(b"\xff{")
            elif config_file == "dir":
                path.mkdir()
            argv[1:1] = ["--config", str(path)]
        code, out, _ = _cli(argv, capsys, [work])
        assert code in (0, 2)
        if code == 0:  # what `sphere config` prints is a valid config that loads back unchanged
            printed = Config.from_dict(json.loads(out)).validate()
            (work / "printed.json").write_text(out)
            assert load(str(work / "printed.json")) == printed


seed_specs = st.one_of(
    st.builds(lambda lo, width: f"{lo}-{lo + width}", st.integers(0, 50), st.sampled_from([-3, 0, 1, 2, 10_000, 99_999, 10**6])),
    st.lists(st.integers(-2, 2**32), min_size=1, max_size=3).map(lambda xs: ",".join(map(str, xs))),
    strings,
)
grid_args = st.one_of(
    st.builds(lambda k, vs: f"{k}={','.join(vs)}", keys, st.lists(st.one_of(value_text, st.just("")), max_size=4)),
    strings,
)


@settings(max_examples=_n(170), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(sorted(PRESETS)), strings), max_size=2), st.lists(grid_args, max_size=3),
       st.one_of(st.none(), seed_specs), st.lists(override_strings, max_size=3),
       st.lists(st.sampled_from(["--status", "--name", "--name=../x", "--name=ok", "--num-cpus", "--num-cpus=0",
                                 "--retries=-1", "--gpus-per-job=x", "--address", "--dir=/", "--bogus", "-"]), max_size=2))
def test_cli_sweep_dry_run(tmp_path, capsys, tripwires, presets, grid, seeds, overrides, extra):
    with _sandbox(tmp_path) as work:
        argv = ["sweep", "--dry-run", "--out-dir", "sweeps"]  # --dry-run first: no later token can swallow it
        for name in presets:
            argv += ["--preset", name]
        for g in grid:
            argv += ["--grid", g]
        argv += ["--seeds", seeds] if seeds is not None else []
        argv += [*extra, *overrides]
        code, _, _ = _cli(argv, capsys, [work])
        assert code in (0, 2)


spec_mappings = st.fixed_dictionaries({}, optional={
    "name": json_values, "preset": st.one_of(st.sampled_from(sorted(PRESETS)), json_values),
    "presets": st.one_of(st.lists(st.sampled_from(sorted(PRESETS)), max_size=2), json_values),
    "overrides": st.one_of(st.lists(override_strings, max_size=3), st.dictionaries(keys, values, max_size=3), json_values),
    "grid": st.one_of(st.dictionaries(keys, st.one_of(st.lists(scalars, max_size=3), scalars), max_size=2), json_values),
    "seeds": st.one_of(seed_specs, json_values), "bogus": json_values,
})


@settings(max_examples=_n(120), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec_mappings, st.sampled_from(["spec.yaml", "spec.yml", "spec.toml", "spec.txt", "missing.yaml"]),
       st.sampled_from(["json", "broken", "list"]))
def test_cli_sweep_spec_files(tmp_path, capsys, tripwires, mapping, filename, form):
    with _sandbox(tmp_path) as work:
        path = work / filename
        text = json.dumps(mapping) if form == "json" else json.dumps([mapping]) if form == "list" else json.dumps(mapping)[1:]
        if filename != "missing.yaml":
            path.write_text(text.replace(": ", " = ") if filename.endswith(".toml") else text)
        code, _, _ = _cli(["sweep", "--dry-run", str(path), "--out-dir", "sweeps"], capsys, [work])
        assert code in (0, 2)


def _fake_run(root: Path, config: typing.Any, *, summary: typing.Any = None, checkpoint: bytes | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (root / "manifest.json").write_text(json.dumps({"seed": 0}))
    if summary is not None:
        (root / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    if checkpoint is not None:
        (root / "checkpoints").mkdir()
        (root / "checkpoints" / "ckpt_000000000064.ckpt").write_bytes(checkpoint)
    return root


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    """Run directories no command here can use: no checkpoint, a corrupt checkpoint, no summary, probe files."""
    from sphere_rl.config import preset

    base = tmp_path_factory.mktemp("fake-runs")
    valid = preset("demo-quick").to_dict()
    runs = {
        "none": _fake_run(base / "none", valid),
        "corrupt": _fake_run(base / "corrupt", valid, checkpoint=b"garbage"),
        "badjson": _fake_run(base / "badjson", "{not json"),
        "list": _fake_run(base / "list", [1, 2], summary=[3]),
        "notrun": base / "notrun",
        "file": base / "file.txt",
        "missing": base / "missing",
    }
    runs["notrun"].mkdir()
    runs["file"].write_text("x")
    probes = base / "probes"
    probes.mkdir()
    np.save(probes / "scalar.npy", np.float32(1.0))
    np.save(probes / "empty.npy", np.zeros((0,), np.float32))
    np.save(probes / "text.npy", np.array(["a", "b"]))
    np.save(probes / "wide.npy", np.zeros((4, 3), np.float32))
    np.savez(probes / "nostates.npz", x=np.zeros(3))
    (probes / "junk.npy").write_bytes(b"\x93NUMPY junk")
    (probes / "empty.npz").write_bytes(b"")
    return base, runs, probes


def _ints(*extra: int):
    return st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([0, 1, -1, 64, 10**12, *extra]))


@settings(max_examples=_n(140), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["eval", "diagnose", "metrics"]), st.sampled_from(["none", "corrupt", "badjson", "list", "notrun", "file", "missing"]),
       st.fixed_dictionaries({}, optional={
           "--checkpoint": _ints().map(str) | strings, "--task": _ints(2).map(str), "--n-states": _ints().map(str),
           "--episodes": _ints().map(str), "--method": st.sampled_from(["structured", "generic", "exact"]),
           "--reduction": st.sampled_from(["trace", "full", "half"]), "--reference": strings, "--probe": st.sampled_from(
               ["scalar.npy", "empty.npy", "text.npy", "wide.npy", "nostates.npz", "junk.npy", "empty.npz", "missing.npy", "."]),
           "--out": st.sampled_from([".", "out.json"])}),
       st.booleans(), st.sampled_from([["--checkpoint", "63"], ["--checkpoint", "-64"], ["--episodes", "0"], ["--task", "2"],
                                       ["--task", "-1"], ["--n-states", "0"], ["--out", "."], ["--probe", "missing.npy"]]))
def test_cli_eval_diagnose_metrics_on_unusable_runs(tmp_path, capsys, tripwires, fake_runs, command, which, options, flag,
                                                    forced):
    """Every call fails before an agent is built: the run has no usable checkpoint, or the arguments are bad."""
    base, runs, probes = fake_runs
    allowed = {"eval": {"--checkpoint", "--episodes"}, "diagnose": {"--checkpoint", "--task", "--n-states", "--method",
               "--reduction", "--probe", "--out"}, "metrics": {"--reference"}}[command]
    argv = [command, str(runs[which])]
    for option, value in options.items():
        if option in allowed or flag:  # with `flag`, options of other commands too (argparse refuses them)
            argv += [option, str(probes / value) if option == "--probe" and value != "." else value]
    if command == "metrics" and flag:
        argv.append("--write")
    if which == "corrupt" and command != "metrics":  # its checkpoint is found corrupt only when an agent loads it,
        argv += forced  # so one argument is always bad (the last occurrence of an option wins)
    with _sandbox(tmp_path) as work:
        code, _, _ = _cli(argv, capsys, [work, base])
        assert code == 2


results_dirs = st.sampled_from(["missing", "notrun", "file", "none", "badjson", "list", "base", "garbage"])


@settings(max_examples=_n(70), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["results", "compare", "report"]), results_dirs, config_dicts, json_values,
       st.fixed_dictionaries({}, optional={
           "--by": st.sampled_from(FIELDS) | strings, "--metric": st.sampled_from(["average_success", "cw.forgetting", "x"]) | strings,
           "--baseline": strings, "--reps": st.sampled_from(["-1", "0", "1", "99", "100", str(10**9), "x"]),
           "--format": st.sampled_from(["csv", "parquet", "xlsx"]), "-o": st.sampled_from(["out.csv", "out.parquet", ".", ""]),
           "--heldout": strings, "--include-incomplete": st.just(None)}))
def test_cli_results_compare_report_on_non_run_directories(tmp_path, capsys, tripwires, fake_runs, command, which,
                                                            config, summary, options):
    base, runs, _ = fake_runs
    allowed = {"results": {"-o", "--format", "--include-incomplete"}, "compare": {"--by", "--metric", "--baseline", "--reps"},
               "report": {"-o", "--heldout", "--reps"}}[command]
    with _sandbox(tmp_path) as work:
        if which == "garbage":  # two runs with fuzzed config.json and summary.json
            for i in range(2):
                _fake_run(work / "garbage" / f"r{i}", config, summary=summary if i == 0 else None)
            path = work / "garbage"
        else:
            path = base if which == "base" else runs[which]
        argv = [command, str(path)]
        for option, value in options.items():
            if option in allowed:
                argv += [option] if value is None else [option, value]
        code, _, _ = _cli(argv, capsys, [work] if which == "garbage" else [work, base])
        assert code in (0, 2)


@settings(max_examples=_n(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config_dicts, st.one_of(st.none(), json_values), st.sampled_from(["json", "broken", "nomanifest"]))
def test_cli_resume_of_broken_runs(tmp_path, capsys, tripwires, config, summary, form):
    """`train --resume` of a directory whose config.json / summary.json are fuzzed (never a config that would train)."""
    if form != "broken":
        try:
            Config.from_saved(config).validate()
        except ConfigError:
            pass
        else:
            assume(summary is not None)  # a valid config without summary.json would resume training
    with _sandbox(tmp_path) as work:
        run = _fake_run(work / "run", json.dumps(config) if form != "broken" else json.dumps(config)[1:], summary=summary)
        if form == "nomanifest":
            (run / "manifest.json").unlink()
        code, _, _ = _cli(["train", "--resume", str(run)], capsys, [work])
        assert code in (0, 2)


@settings(max_examples=_n(80), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["plasticity", "proxy", "demo", "bench"]), st.lists(override_strings, max_size=3),
       st.sampled_from(INVALID), st.integers(-(2**33), 2**33), st.sampled_from([0, 1, -2, 4097, 2**31]),
       st.lists(st.sampled_from(["--quick", "--suite=update", "--suite=bogus", "--runs", "--seed", "--bogus"]), max_size=2))
def test_cli_training_commands_refuse_bad_input_before_training(tmp_path, capsys, tripwires, command, overrides, invalid,
                                                                number, bad_count, extra):
    """plasticity / proxy / demo / bench with one bad argument each: exit 2 before any agent is built."""
    with _sandbox(tmp_path) as work:
        argv = {
            "plasticity": ["plasticity", "--out-dir", "out", *overrides, *extra, "--seeds", str(min(bad_count, 0)), invalid],
            "proxy": ["proxy", "--out-dir", "out", "--seed", str(abs(number)), *extra, *overrides, invalid],
            "demo": ["demo", "--out-dir", "out", *extra, "--seed", str(-1 - abs(number))],
            "bench": ["bench", "--out", "out", *extra, "--experts", "10", str(bad_count)],
        }[command]
        code, _, _ = _cli(argv, capsys, [work])
        assert code == 2


def test_cli_examples_found_by_fuzzing(tmp_path, capsys, tripwires, fake_runs):
    """CLI inputs the fuzzer found that gave a traceback, a misleading message, or got past the point of no return."""
    base, runs, _ = fake_runs
    (tmp_path / "spec.yaml").write_text("preset: 5\n")
    (tmp_path / "list.json").write_text("[1]")
    complete = _fake_run(tmp_path / "complete", Config().to_dict(), summary=[1])
    with _sandbox(tmp_path) as work:
        for argv, needle in [
            (["train", "--preset", "demo-quick", "--out-dir", "out", "run.tasks=gym:CartPole-v1"], "Discrete action space"),
            (["train", "--config", str(tmp_path / "list.json")], "config must be a mapping"),
            (["train", "--preset", "demo-quick", "--out-dir", "FILE/sub"], "Not a directory"),
            (["eval", str(runs["none"])], "has no checkpoint"),
            (["eval", str(runs["corrupt"]), "--checkpoint", "-1"], "no checkpoint at env step -1"),
            (["eval", str(runs["badjson"])], "not valid JSON"),
            (["diagnose", str(runs["corrupt"]), "--task", "7"], "--task must be in [0, 1]"),
            (["diagnose", str(runs["corrupt"]), "--probe", str(base / "probes" / "junk.npy")], "--probe"),
            (["results", str(runs["none"])], "no finished runs"),
            (["results", str(runs["list"])], "not a readable run"),
            (["results", str(base), "--include-incomplete", "-o", "."], "is a directory"),
            (["report", str(runs["none"])], "no finished runs"),
            (["compare", str(runs["none"]), "--reps", "5"], "--reps"),
            (["sweep", "--dry-run", "--preset", "demo", "--seeds", "0-99999"], "jobs"),
            (["sweep", "--dry-run", str(tmp_path / "spec.yaml")], "preset"),
            (["sweep", "--dry-run", "--grid", "0\r0=."], "unknown config field"),
            (["plasticity", "--seeds", "0"], "--seeds"),
            (["bench", "--experts", "0"], "--experts"),
            (["train", "--bogus"], "unrecognized arguments: --bogus"),
        ]:
            (work / "FILE").write_text("")
            code, _, err = _cli(argv, capsys, [work, base])
            assert code == 2 and needle in err, (argv, err)
        code, out, _ = _cli(["train", "--resume", str(complete)], capsys, [work])
        assert code == 0 and "is complete (summary.json is not a JSON object)" in out
