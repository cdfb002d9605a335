"""The `sphere` command line: train, resume, eval, diagnose, metrics, demo, envs, methods, presets, config, bench, plasticity,
sweep, results, compare, correlate, study, report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from sphere_rl.config import PRESETS, Config, ConfigError, load, preset


def _build_config(args: argparse.Namespace) -> Config:
    if args.config:
        cfg = load(args.config)
        if args.overrides:
            cfg = cfg.override(args.overrides)
        return cfg.validate().resolved()
    return preset(args.preset, args.overrides)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the fully resolved config of a preset (or config file) plus overrides, as JSON."""
    if args.preset_name and "=" in args.preset_name:  # no preset given: the first word is an override
        args.overrides, args.preset_name = [args.preset_name, *args.overrides], None
    if args.preset_name and args.config:
        raise ConfigError("give a preset name or --config FILE, not both")
    args.preset = args.preset_name or "default"
    print(_build_config(args).to_json())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sphere_rl.protocols.runner import Runner
    from sphere_rl.runs import RunDir

    if args.resume:
        if args.overrides or args.config or args.name or args.out_dir or args.seeds:
            raise ConfigError("--resume continues a run with its saved config and place; "
                              "drop the overrides/--config/--name/--out-dir/--seeds")
        from sphere_rl.protocols.multiseed import is_group

        if is_group(args.resume):
            return _resume_group(args.resume)
        run_dir = RunDir.open(args.resume)
        try:
            saved = run_dir.config
        except ValueError as err:  # json.JSONDecodeError
            raise ConfigError(f"{run_dir.path('config.json')} is not valid JSON ({err}); this run cannot be resumed")
        if run_dir.is_complete:
            try:
                summary = run_dir.summary
            except ValueError:  # not JSON
                summary = None
            if isinstance(summary, dict):
                avg = summary.get("average_success", float("nan"))
                avg = f"{avg:.3f}" if isinstance(avg, (int, float)) and not isinstance(avg, bool) else repr(avg)
                state = f"summary.json: average success {avg}, {summary.get('env_steps', '?')!r} env steps"
            else:
                state = "summary.json is not a JSON object"
            print(f"{run_dir.root} is complete ({state}); nothing to resume")
            return 0
        cfg = Config.from_saved(saved).validate()
        step = run_dir.checkpoints.latest_step()
        print(f"resuming {run_dir.root} from " + (f"its checkpoint at env step {step}" if step is not None
                                                   else "env step 0 (it stopped before its first checkpoint)"))
        result = Runner(cfg, run_dir).run(resume=True)
    else:
        cfg = _build_config(args)
        if args.out_dir:
            cfg = cfg.override({"run.out_dir": args.out_dir})
        if args.name:
            cfg = cfg.override({"run.name": args.name})
        cfg = cfg.validate()
        if args.seeds:
            return _train_group(cfg, args.seeds)
        out_existed = Path(cfg.run.out_dir).exists()
        run_dir = RunDir.create(cfg.run.out_dir, name=cfg.run.name or None, config=cfg.to_dict(), seed=cfg.seed)
        try:
            runner = Runner(cfg, run_dir)
        except ValueError as err:  # e.g. tasks of different sizes: found when the envs are built
            import shutil

            shutil.rmtree(run_dir.root, ignore_errors=True)  # created just now; nothing of value in it
            if not out_existed:
                shutil.rmtree(cfg.run.out_dir, ignore_errors=True)
            raise ConfigError(str(err)) from None
        print(f"run directory: {run_dir.root}")
        result = runner.run()
    _print_result(result)
    return 0


def _train_group(cfg: Config, seeds_arg: str) -> int:
    """`sphere train --seeds`: one run directory per seed in a group folder; JAX-native tasks train all
    seeds in one process (vmapped), host envs one seed after another."""
    from sphere_rl.protocols.multiseed import SeedGroup, create_group
    from sphere_rl.sweeps.spec import SpecError, parse_seeds

    try:
        seeds = parse_seeds(seeds_arg)
    except SpecError as err:
        raise ConfigError(f"--seeds: {err}") from None
    if len(seeds) > 1024:
        raise ConfigError(f"--seeds: at most 1024 seeds in one process, got {len(seeds)} (use sphere sweep)")
    cfgs = [cfg.override({"seed": s}).validate() for s in seeds]
    out_existed = Path(cfg.run.out_dir).exists()
    runs = create_group(cfgs, cfg.run.out_dir, cfg.run.name or None)
    root = runs[0].root.parent
    try:
        group = SeedGroup(cfgs, runs) if _jax_native(cfg) else None
    except ValueError as err:  # e.g. tasks of different sizes
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        if not out_existed:
            shutil.rmtree(cfg.run.out_dir, ignore_errors=True)
        raise ConfigError(str(err)) from None
    print(f"seed group: {root} ({len(seeds)} seeds: {', '.join(map(str, seeds))}"
          + (", in one process)" if group is not None else ", one after another: host envs)"))
    results = group.run() if group is not None else [_run_alone(c, r) for c, r in zip(cfgs, runs)]
    _print_group(seeds, results)
    return 0


def _jax_native(cfg: Config) -> bool:
    from sphere_rl import envs

    return all(envs.is_jax_native(t) for t in envs.resolve_sequence(cfg.run.tasks))


def _run_alone(cfg: Config, run_dir):
    from sphere_rl.protocols.runner import Runner

    return Runner(cfg, run_dir).run()


def _resume_group(path: str) -> int:
    from sphere_rl.protocols.multiseed import SeedGroup, open_group

    cfgs, runs = open_group(path)
    if all(r.is_complete for r in runs):
        print(f"{path} is complete ({len(runs)} seeds); nothing to resume")
        return 0
    steps = [r.checkpoints.latest_step() for r in runs]
    print(f"resuming seed group {path}: newest checkpoints at env steps {steps}")
    if _jax_native(cfgs[0]):
        results = SeedGroup(cfgs, runs).run(resume=True)
    else:
        from sphere_rl.protocols.runner import Runner

        results = [Runner(c, r).run(resume=True) for c, r in zip(cfgs, runs)]
    _print_group([c.seed for c in cfgs], results)
    return 0


def _print_group(seeds, results) -> None:
    import numpy as np

    from sphere_rl.report.tables import results_table
    from sphere_rl.results.stats import summarize

    print(results_table({f"seed {s}": r for s, r in zip(seeds, results)}))
    matrix = np.asarray([r.final_success for r in results], dtype=float)
    row = summarize({"group": matrix}).loc["group"]
    ci = f" [{row['mean_lo']:.3f}, {row['mean_hi']:.3f}] (95 % bootstrap CI over {len(results)} seeds)" \
        if len(results) > 1 else " (one seed: indicative only)"
    print(f"average success {row['mean']:.3f}{ci}")


def _print_result(result) -> None:
    from sphere_rl.report.tables import results_table

    print(results_table({"run": result}))
    print(f"average success {result.average_success:.3f} | {result.env_steps} env steps in {result.wall_time_s:.0f} s")
    if result.continual:
        c = result.continual
        print(f"Continual World: average performance {c['average_performance']:.3f}, forgetting {c['forgetting']:.3f}, "
              f"forward transfer {c['forward_transfer']:.3f} over {c['forward_transfer_tasks']} tasks "
              f"({'reference ' + c['reference_run'] if c['reference_run'] else 'no reference run: set run.reference_run'})")


def cmd_metrics(args: argparse.Namespace) -> int:
    from sphere_rl.protocols.continual_metrics import run_continual_metrics
    from sphere_rl.protocols.runner import CONTINUAL_METRICS_FILE
    from sphere_rl.runs import RunDir
    from sphere_rl.runs.atomic import atomic_write_text

    try:
        metrics = run_continual_metrics(args.run_dir, args.reference)
    except ValueError as err:
        print(f"sphere metrics: {err}", file=sys.stderr)
        return 2
    print(metrics.markdown())
    if args.write:
        run_dir = RunDir.open(args.run_dir)
        path = atomic_write_text(run_dir.path(CONTINUAL_METRICS_FILE), metrics.to_csv())
        run_dir.mark_complete({**run_dir.summary, "continual": metrics.summary()})
        print(f"written to {path} and {run_dir.path('summary.json')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sphere_rl.protocols.evaluate import evaluate_run

    report = evaluate_run(args.run_dir, step=args.checkpoint, episodes=args.episodes)
    for row in report["tasks"]:
        print(f"{row['task']:<28} success {row['success']:.2f}  return {row['return']:9.2f}")
    print(f"average success {report['average_success']:.3f} (checkpoint at env step {report['env_step']}); written to {report['path']}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from sphere_rl.protocols.diagnose import diagnose_run

    try:
        report = diagnose_run(args.run_dir, step=args.checkpoint, task_index=args.task, probe=args.probe,
                              n_states=args.n_states, ntk=not args.no_ntk, method=args.method,
                              reduction=args.reduction, out=args.out)
    except ValueError as err:  # bad --task / --n-states / probe shape: a usage error, not a crash
        print(f"sphere diagnose: {err}", file=sys.stderr)
        return 2
    m = report["metrics"]
    print(f"{report['task']} (task {report['task_index']}), checkpoint at env step {report['env_step']}, "
          f"{report['n_states']} probe states from {report['probe']}")
    if report["ntk_eigenvalues"] is not None:
        top = ", ".join(f"{v:.4g}" for v in report["ntk_eigenvalues"][:3])
        print(f"  r_e(K) {m['ntk/effective_rank']:8.2f}   top eigenvalues {top}   ({m['ntk/seconds']:.2f} s, {report['ntk_method']})")
    top = ", ".join(f"{v:.4g}" for v in report["proxy_eigenvalues"][:3])
    print(f"  r_e(A) {m['proxy/effective_rank']:8.2f}   top eigenvalues {top}")
    for key in sorted(k for k in m if not k.startswith(("ntk/", "proxy/eig"))):
        print(f"  {key:<34} {m[key]:.4g}")
    print(f"written to {report['path']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sphere_rl.experiments.demo import run_demo

    from sphere_rl.sweeps.spec import SpecError, parse_seeds

    try:
        seeds = parse_seeds(args.seeds)
    except SpecError as err:
        raise ConfigError(f"--seeds: {err}") from None
    if len(seeds) > 64:
        raise ConfigError(f"--seeds: at most 64 seeds per method in the demo, got {len(seeds)}")
    run_demo(out_dir=args.out_dir, seeds=seeds, quick=args.quick, parallel=not args.sequential)
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from sphere_rl import envs

    print("Environments:")
    for spec in envs.list_envs():
        kind = "jax" if spec.jax_native else "gym"
        print(f"  {spec.id:<40} [{kind}] {spec.description}")
    print("  gym:<Gymnasium id>                         [gym] any installed Gymnasium env through the vector adapter")
    print("Task sequences:")
    for name, seq in envs.list_sequences().items():
        print(f"  {name:<12} {' -> '.join(seq.env_ids)}")
        print(f"  {'':<12} {seq.description}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, entry in sorted(PRESETS.items()):
        print(f"{name:<16} {entry['description']}")
        for key, value in entry["overrides"].items():
            print(f"{'':<18}{key}={value}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """The plasticity methods: name, kind, how to switch it on, its settings with their defaults, reference."""
    from sphere_rl.experiments.bench_methods import latest_method_costs
    from sphere_rl.methods import METHODS, settings_of

    cfg = Config()
    costs, source = latest_method_costs() or ({}, None)
    for name, spec in sorted(METHODS.items(), key=lambda item: (item[1].kind, item[0])):
        switch = f"methods=[{name}]" + (f" or {spec.enabled_by}" if spec.enabled_by else "")
        print(f"{name:<14} {spec.kind:<13} {switch}")
        print(f"{'':<15}{spec.summary}")
        settings = settings_of(spec, cfg)
        if settings:
            print(f"{'':<15}settings: " + ", ".join(f"{k}={v!r}" for k, v in settings.items()))
        print(f"{'':<15}reference: {spec.reference}")
        cost = costs.get(name)
        if cost and cost.get("overhead_pct") is not None:
            fire = f"; one firing {cost['firing_seconds']:.3f} s" if "firing_seconds" in cost else ""
            print(f"{'':<15}cost: update phase {cost['overhead_pct']:+.1f} % against none at the paper size{fire} ({source})")
    if not costs:
        print("costs: not measured here yet; `sphere bench --suite methods` measures every method's update-phase "
              "overhead at the paper size")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sphere_rl.experiments.bench import DEFAULT_BENCH_SUITES, run_bench

    if not all(2 <= e <= 4096 for e in args.experts):  # Top-K keeps 2 experts; checked before any benchmark runs
        raise ConfigError(f"--experts must be in [2, 4096], got {args.experts}")
    run_bench(out=args.out, quick=args.quick, experts=tuple(args.experts), suites=tuple(args.suite or DEFAULT_BENCH_SUITES))
    return 0


def cmd_plasticity(args: argparse.Namespace) -> int:
    from sphere_rl.experiments.plasticity_gap import run_plasticity_gap

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    run_plasticity_gap(seeds=args.seeds, out_dir=args.out_dir, overrides=args.overrides)
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from sphere_rl.experiments.proxy_validation import run_proxy_validation

    run_proxy_validation(run_dirs=args.run_dirs, out_dir=args.out_dir, seed=args.seed, overrides=args.overrides,
                         diag_every=args.diag_every)
    return 0


def _sweep_spec(args: argparse.Namespace):
    from sphere_rl.sweeps.spec import SweepSpec, load_spec, parse_grid_arg, parse_seeds

    if args.spec and "=" in args.spec:  # no spec file: the first word is a shared override
        args.overrides, args.spec = [args.spec, *args.overrides], None
    if args.spec:
        if args.preset or args.grid or args.seeds or args.overrides:
            raise ConfigError("give a spec file or --preset/--grid/--seeds/overrides, not both")
        spec = load_spec(args.spec)
        return dataclasses.replace(spec, name=args.name) if args.name else spec
    return SweepSpec(presets=tuple(args.preset or ["default"]), grid=tuple(parse_grid_arg(g) for g in args.grid or []),
                     seeds=parse_seeds(args.seeds or "0"), overrides=tuple(args.overrides), name=args.name or "")


def cmd_sweep(args: argparse.Namespace) -> int:
    from sphere_rl.sweeps.launch import default_sweep_dir, launch
    from sphere_rl.sweeps.sweep_dir import SweepDir

    spec = _sweep_spec(args)
    jobs = spec.jobs()  # every config validated before anything is written
    root = args.dir or default_sweep_dir(spec, args.out_dir)
    if args.dry_run or args.status:
        states = SweepDir(root).states() if args.status and (Path(root) / "sweep.json").is_file() else {}
        print(f"sweep {root}: {len(jobs)} jobs ({spec.n_cells} cells x {len(spec.seeds)} seeds)")
        for job in jobs:
            state = states.get(job.job_id, "pending") if args.status else "job"
            print(f"  {state:<12} {job.job_id}  {job.label}")
        return 0
    if args.address and args.num_cpus is not None:
        print("sphere sweep: --num-cpus applies to a local Ray only; the cluster's CPUs are used", file=sys.stderr)
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    if args.retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {args.retries}")
    if not 0 <= args.seeds_per_process <= 1024:
        raise ConfigError(f"--seeds-per-process must be in [0, 1024], got {args.seeds_per_process}")
    outcome = launch(spec, root, address=args.address, num_cpus=args.num_cpus, retries=args.retries,
                     num_gpus=args.gpus_per_job, seeds_per_process=args.seeds_per_process)
    return 0 if all(s in ("done", "busy") for s in outcome.states.values()) else 1


def cmd_results(args: argparse.Namespace) -> int:
    from sphere_rl.results.table import load_results

    if args.out and Path(args.out).is_dir():
        print(f"sphere results: -o {args.out!r} is a directory; give the output file's path", file=sys.stderr)
        return 2
    try:
        results = load_results(args.path, complete_only=not args.include_incomplete)
    except ValueError as err:
        print(f"sphere results: {err}", file=sys.stderr)
        return 2
    fmt = args.format or ("csv" if args.out and args.out.endswith(".csv") else "parquet")
    out = args.out or str(Path(args.path) / f"results.{fmt}")
    written = results.write(out, fmt=fmt)
    done = int(results.runs["complete"].sum())
    print(f"{len(results.runs)} runs ({done} complete), {len(results.long)} rows; cell columns: "
          f"{', '.join(results.cell_columns) or '(none: every run has the same config)'}")
    for path in written:
        print(f"written {path}")
    return 0


def _check_reps(reps: int) -> None:
    if not 100 <= reps <= 1_000_000:
        raise ConfigError(f"--reps (bootstrap resamples) must be in [100, 1000000], got {reps}")


def cmd_correlate(args: argparse.Namespace) -> int:
    from sphere_rl.results.plasticity import SPECTRAL, probe_correlations
    from sphere_rl.results.table import load_results

    if not 100 <= args.reps <= 1_000_000:
        raise ConfigError(f"--reps must be in [100, 1000000], got {args.reps}")
    if args.next_task:
        from sphere_rl.results.plasticity import DEFICIT_AGAINST, deficit_correlations

        results = load_results(args.path, sources=("summary", "diagnostics"), complete_only=True)
        table = deficit_correlations(results, against=tuple(args.against or DEFICIT_AGAINST), reps=args.reps)
        if table.empty or int(table["n_rows"].max()) == 0:
            raise ConfigError(f"{args.path} has no CRL run beside RL runs of the same config (the next task's "
                              "deficit is measured against learning it from scratch)")
        print("Spearman rho of the next task's deficit (mean RL success on task t minus this CRL run's) with each "
              "metric at the end of task t-1; over all rows, and within task indices; 95 % CIs from resampling "
              f"runs ({args.reps} draws); p_rows treats rows as independent")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return 0
    results = load_results(args.path, sources=("diagnostics",))
    table = probe_correlations(results, probe=args.probe, against=tuple(args.against or SPECTRAL), reps=args.reps)
    if table.empty or int(table["n_rows"].max()) == 0:
        raise ConfigError(f"no diagnostics row of {args.path} has {args.probe!r} (the probes are logged at "
                          "initialisation and task ends: fit/* when diag.fit_steps > 0, rlprobe/* when "
                          "diag.rl_probe_steps > 0)")
    print(f"Spearman rho of {args.probe} with each metric, over every (run, env step) where it was measured; "
          f"95 % CI from resampling runs ({args.reps} draws); p_rows treats rows as independent")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from sphere_rl.experiments.study import (VISITS_NOTE, format_study, format_visits, study_table, visits_table,
                                             write_study)
    from sphere_rl.results import stats
    from sphere_rl.results.table import load_results

    _check_reps(args.reps)
    method = [f.strip() for f in args.method.split(",") if f.strip()] if args.method else None
    try:
        results = load_results(args.path, complete_only=True)
        if args.first_tasks is not None:
            try:
                results = results.first_tasks(args.first_tasks)
            except ValueError as err:
                raise ValueError(f"--first-tasks: {err}") from None
        if args.out:
            visits = visits_table(results, method=method, baseline=args.baseline, reps=args.reps)
            text, files = write_study(results, args.out, method=method, baseline=args.baseline, reps=args.reps,
                                      visits=visits)
            if len(visits):
                from sphere_rl.report.figures import save_figure, visits_curves
                files += save_figure(visits_curves(visits), Path(args.out) / "figures", "visits")
            print(text)
            print("wrote " + ", ".join(str(f) for f in files))
        else:
            cells, diffs = format_study(study_table(results, method=method, baseline=args.baseline, reps=args.reps))
            print(stats.to_text(cells))
            if len(diffs):
                print()
                print(stats.to_text(diffs))
            visits = visits_table(results, method=method, baseline=args.baseline, reps=args.reps)
            if len(visits):
                print("\nby visit (the sequence repeats its tasks; " + VISITS_NOTE[VISITS_NOTE.index(";") + 2:] + ")")
                print(stats.to_text(format_visits(visits)))
    except ValueError as err:  # no protocol, unknown method field or baseline
        print(f"sphere study: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from sphere_rl.results.compare import compare_report
    from sphere_rl.results.table import load_results

    _check_reps(args.reps)
    try:
        results = load_results(args.path, complete_only=True)
        print(compare_report(results, by=args.by, metric=args.metric, baseline=args.baseline, reps=args.reps))
    except ValueError as err:  # --by that does not vary, unknown metric or baseline, too few runs
        print(f"sphere compare: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sphere_rl.report.sweep_report import build_sweep_report

    _check_reps(args.reps)
    try:
        path = build_sweep_report(args.path, args.out, heldout=args.heldout, reps=args.reps, figures_dir=args.figures,
                                  by=args.by)
    except ValueError as err:
        print(f"sphere report: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other bad input: `sphere train: error: ... (see `sphere train -h`)`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {'  '.join(message.splitlines())} (see `{self.prog} -h`)\n")


class _SubcommandParser(_Parser):
    """A subcommand's parser: its positionals (dotted overrides, a preset, a spec) may come before, between
    and after its options, e.g. `sphere train --preset demo a=1 --out-dir X b=2` (plain argparse stops the
    overrides at the first option and rejects `b=2`). The top-level parser cannot parse intermixed (its
    subcommand is a positional of nargs PARSER), so each subcommand's parser does."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # the two passes of parse_known_intermixed_args call back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sphere", description="sphere-rl: plasticity loss in continual RL with MoE PPO and SPHERE.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)

    p = sub.add_parser("train", help="train a preset (RL or CRL) or resume a run", description=(
        "Train from a named preset plus dotted overrides, e.g. `sphere train --preset demo net.actor=mlp ppo.lr=1e-3`, "
        "or continue an interrupted run with `sphere train --resume RUN_DIR`."))
    p.add_argument("overrides", nargs="*", help="dotted overrides section.field=value")
    p.add_argument("--preset", default="default", help="named preset (see `sphere presets`)")
    p.add_argument("--config", help="a config JSON file (e.g. another run's config.json)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last good checkpoint")
    p.add_argument("--out-dir", help="parent folder of the run directory (run.out_dir)")
    p.add_argument("--name", help="run directory name (run.name); with --seeds, the group folder's")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="train these seeds (e.g. 0-4 or 0,3,7) as a seed group: one run directory each, "
                        "all in one process when the tasks are JAX-native (vmapped)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on all its tasks")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", type=int, default=None, help="env step of the checkpoint (default: latest good)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the run's eval_episodes)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("diagnose", help="r_e(K), r_e(A) and plasticity metrics of a run's checkpoint on a probe set")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", type=int, default=None, help="env step of the checkpoint (default: latest good)")
    p.add_argument("--task", type=int, default=None, help="task index whose probe set to use (default: the checkpoint's task)")
    p.add_argument("--probe", default=None, help="probe file: a run's probes/task_XX.npz or an .npy (N, obs_dim) array of raw states")
    p.add_argument("--n-states", type=int, default=None, help="subsample the probe set to N states")
    p.add_argument("--method", choices=["structured", "generic"], default=None, help="eNTK path (default: the run's diag.ntk_method)")
    p.add_argument("--reduction", choices=["trace", "full"], default=None, help="eNTK reduction (default: the run's)")
    p.add_argument("--no-ntk", action="store_true", help="skip r_e(K) (cheap metrics only)")
    p.add_argument("--out", default=None, help="JSON report path (default: RUN_DIR/diagnose_<step>_task<t>.json)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("metrics", help="Continual World metrics of a finished CRL run (forward transfer against a reference rl run)")
    p.add_argument("run_dir")
    p.add_argument("--reference", default=None, help="a finished rl run over the same tasks and budget (default: none)")
    p.add_argument("--write", action="store_true", help="(re)write the run's continual_metrics.csv and summary.json's `continual` with these numbers")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("demo", help="CRL on the built-in suite: Top-K MoE vs Top-K MoE + SPHERE over seeds, with CIs")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--seeds", default="0-4", help="seeds per method (default 0-4)")
    p.add_argument("--quick", action="store_true", help="a much smaller budget (a smoke test, no effect expected)")
    p.add_argument("--sequential", action="store_true", help="train the two methods one after the other in this process")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("envs", help="list environment ids and task sequences")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("config", help="print the fully resolved config of a preset plus overrides (JSON)", description=(
        "Print the config a run would use, every field resolved (e.g. reg.coef from reg.mode), as JSON: "
        "`sphere config h1-paper reg.name=sphere reg.mode=grad`."))
    p.add_argument("preset_name", nargs="?", default=None, metavar="PRESET", help="named preset (default: default)")
    p.add_argument("overrides", nargs="*", help="dotted overrides section.field=value")
    p.add_argument("--config", help="a config JSON file instead of a preset (e.g. a run's config.json)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("methods", help="list the plasticity methods: kind, how to switch on, settings, reference")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("presets", help="list named config presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("bench", help="benchmarks: update-phase time, SPHERE overhead, training throughput, eNTK cost, SBX comparison")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--experts", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument("--suite", action="append", choices=["update", "ntk", "sbx", "metaworld", "sweep", "seeds", "methods"],
                   help="run only this suite (repeatable): update = update phase per actor kind and E, SPHERE "
                        "overhead, throughput; ntk = cost of r_e(K); sbx = env-steps/s against SBX PPO on Hopper-v5 "
                        "and Humanoid-v5 (bench extra); metaworld = the same on metaworld/hammer-v3, with our rate "
                        "over the raw simulator rate (bench extra); sweep = a demo sweep on Ray (wall time vs its jobs, job "
                        "start-up), sphere results on 1,000 runs, the report's size and load time in Chromium; "
                        "seeds = 8 seeds of the demo in one process (vmapped) against 1; methods = every plasticity "
                        "method's update-phase overhead against none at the paper size. Default: update, ntk and sbx")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plasticity", help="RL vs CRL over seeds on the built-in suite (is plasticity loss visible?)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to both protocols")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out-dir", default="runs/plasticity")
    p.set_defaults(func=cmd_plasticity)

    p = sub.add_parser("proxy", help="proxy validation: Spearman correlation of r_e(A) and r_e(K) over a CRL run's checkpoints")
    p.add_argument("--runs", dest="run_dirs", nargs="+", default=None,
                   help="analyse these run directories (default: train the demo CRL pair first)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the runs it trains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diag-every", type=int, default=25_000, help="env steps between diagnostics in the runs it trains")
    p.add_argument("--out-dir", default="runs/proxy")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("sweep", help="run presets x override grid x seeds on Ray (local or a cluster), resumable", description=(
        "Run every job of a sweep: `sphere sweep --preset demo --grid reg.name=none,sphere --seeds 0-4`, or "
        "`sphere sweep spec.yaml`. Re-running the same sweep skips finished jobs and resumes interrupted ones."))
    p.add_argument("spec", nargs="?", default=None, help="a sweep spec file (.yaml/.yml/.toml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every job")
    p.add_argument("--preset", action="append", help="named preset (repeatable: presets are a sweep axis)")
    p.add_argument("--grid", action="append", metavar="FIELD=V1,V2",
                   help="a grid axis, e.g. reg.name=none,sphere (repeatable; list values stay whole: net.hidden_sizes=[64,64],[128,128])")
    p.add_argument("--seeds", help="seeds: 0-4, 0,3,7 or 0-2,10 (default 0)")
    p.add_argument("--name", help="sweep name (default: preset + a hash of the spec)")
    p.add_argument("--dir", help="sweep directory (default: OUT_DIR/NAME)")
    p.add_argument("--out-dir", default="runs/sweeps", help="parent of the sweep directory")
    p.add_argument("--address", help="an existing Ray cluster (e.g. auto, or ray://head:10001); default: a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray: CPUs to use, one job each (default: all)")
    p.add_argument("--gpus-per-job", type=float, default=0.0, help="GPUs per job on a cluster with GPUs (default 0)")
    p.add_argument("--retries", type=int, default=2, help="times a job whose worker died is retried (default 2)")
    p.add_argument("--seeds-per-process", type=int, default=0, metavar="N",
                   help="jobs differing only in their seed (JAX-native envs) train together in one process, "
                        "vmapped, up to N per process (default 0: automatic; 1: one job per process)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs (ids and values) and the sweep directory; run nothing")
    p.add_argument("--status", action="store_true", help="list the jobs with their state (pending, running, interrupted, done, failed); run nothing")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("results", help="one long table of every run under a sweep (or runs) directory -> Parquet/CSV")
    p.add_argument("path", help="a sweep directory, a folder of runs, or one run")
    p.add_argument("-o", "--out", help="output file (default: PATH/results.parquet)")
    p.add_argument("--format", choices=["parquet", "csv"], default=None,
                   help="default: csv when --out ends in .csv, else parquet")
    p.add_argument("--include-incomplete", action="store_true", help="also load runs without summary.json")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("compare", help="statistics of a sweep: per cell mean, IQM with 95%% CIs, tests against a baseline")
    p.add_argument("path", help="a sweep directory or a folder of runs")
    p.add_argument("--by", default="reg.name", help="the config field to compare (default reg.name); several, comma-separated (reg.name,reg.mode), compare their combinations")
    p.add_argument("--metric", default="average_success",
                   help="per-run value: average_success (default), cw.forgetting, cw.forward_transfer, ...")
    p.add_argument("--baseline", default=None, help="the level of --by to compare against (default: the first)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("correlate", help="does a spectral number track how fast the network still learns? "
                                         "Spearman of the plasticity probe with r_e(K), r_e(A), lambda_min, condition")
    p.add_argument("path", help="a sweep directory, a folder of runs, or one run")
    p.add_argument("--probe", default="fit/auc", help="the probe column of diagnostics.csv (default fit/auc)")
    p.add_argument("--against", action="append", help="a diagnostics column (repeatable; default: r_e(K), r_e(A), "
                                                      "ntk/eig_min, ntk/condition)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of runs")
    p.add_argument("--next-task", action="store_true",
                   help="instead: does an agent's state at a task end predict how badly it learns the next task "
                        "(CRL success deficit against RL runs of the same config)?")
    p.set_defaults(func=cmd_correlate)

    p = sub.add_parser("study", help="one table of a grid of architectures x methods x RL/CRL over seeds: success, "
                                     "RL - CRL gap, first task, r_e(K), differences against the baseline with 95%% CIs")
    p.add_argument("path", help="a sweep directory or a folder of runs (several sweeps under one folder)")
    p.add_argument("-o", "--out", default=None, help="folder for study.md and study.csv (default: print only)")
    p.add_argument("--method", default=None,
                   help="the config fields that make a method, comma-separated (default: those of reg.name, reg.mode, "
                        "reg.coef that vary)")
    p.add_argument("--baseline", default=None, help="the baseline method (default: none/... or the first)")
    p.add_argument("--first-tasks", type=int, default=None, metavar="N",
                   help="compare every run on its first N tasks only (runs of at least N tasks): a short run beside "
                        "the start of a longer one of the same config and seed")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("report", help="one self-contained HTML report of a sweep: tables, figures, 3D update geometry")
    p.add_argument("path", help="a sweep directory or a folder of runs")
    p.add_argument("-o", "--out", default=None, help="HTML file (default: PATH/report.html)")
    p.add_argument("--heldout", default=None, help="held-out env id for the feature PCA (default: by task family)")
    p.add_argument("--figures", default=None, help="also write the figures as PNG + PDF into this folder")
    p.add_argument("--by", default=None, help="the config field(s) the statistics compare, comma-separated (default: "
                                             "those of reg.name, reg.mode, reg.coef that vary)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sphere_rl.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"sphere: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as err:
        print(f"sphere: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"sphere: cannot write {err.filename or ''}: permission denied", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from sphere_rl.protocols.runner import RunDivergedError
        from sphere_rl.runs.run_dir import RunInUseError
        from sphere_rl.sweeps.launch import SweepLaunchError

        if isinstance(err, RunDivergedError):  # the run failed (exit 1), the input was fine
            print(f"sphere: {err}", file=sys.stderr)
            return 1
        if not isinstance(err, (SweepLaunchError, RunInUseError)):
            raise
        print(f"sphere: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        from sphere_rl.runs.checkpoint import CheckpointError, CheckpointMismatchError

        if not isinstance(err, CheckpointMismatchError):
            if isinstance(err, CheckpointError):  # NonFiniteCheckpointError
                print(f"sphere: {err}", file=sys.stderr)
                return 1
            raise
        print(f"sphere: checkpoint does not fit this version's agent state (runs before 0.3 have no "
              f"kl_lr / reg_state and cannot be restored; their config, metrics and summary stay readable): {err}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sphere ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        advice = {"train": "continue with `sphere train --resume RUN_DIR`",
                  "sweep": "run the same `sphere sweep` command again to resume"}.get(args.command, "")
        print(f"\nsphere: interrupted{'; ' + advice if advice else ''}", file=sys.stderr)
        return 130
    except Exception as err:  # last, so that BrokenPipeError (an OSError) is handled above
        from sphere_rl.runs.checkpoint import CheckpointError

        if not isinstance(err, CheckpointError):  # e.g. every checkpoint of the run failed verification
            raise
        print(f"sphere: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
