"""Drives a whole run: the RL or CRL protocol over a task sequence, with logging, evaluation,
checkpoints and exact resume.

RL: every task trains a freshly initialised agent (same initial weights for every task).
CRL: one agent goes through the sequence; weights, normaliser (and optimiser state unless
`run.reset_optimizer`) carry over from task to task. Both protocols use the same per-task random
streams, so task 0 of an RL run and of a CRL run with the same seed are identical.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Generator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sphere_rl import envs
from sphere_rl.algo.gym_loop import GymLoop
from sphere_rl.algo.jax_loop import JaxLoop
from sphere_rl.algo.ppo import PPO, all_finite
from sphere_rl.config import Config, ConfigError, rl_probe_task
from sphere_rl.protocols.continual_metrics import ContinualMetrics, continual_metrics, reference_curves
from sphere_rl.protocols.diagnostics import RunDiagnostics
from sphere_rl.runs import RunDir
from sphere_rl.runs.atomic import atomic_write_text

# Streams derived from the seed, fixed so that resume and RL/CRL comparisons line up.
_INIT, _TASK, _EVAL, _PROBE, _RL_PROBE, _SWITCH, _ITERATION = 0, 1, 2, 3, 4, 5, 6
CONTINUAL_METRICS_FILE = "continual_metrics.csv"
EPISODE_KEYS = ("episodes", "episode_return_sum", "episode_length_sum", "episode_success_sum")


@dataclasses.dataclass
class RunResult:
    """What a finished run reports (also written to the run directory's summary.json)."""

    run_dir: str | None
    protocol: str
    tasks: list[str]
    final_success: list[float]
    final_return: list[float]
    proxy_rank: list[float]
    """r_e(A) at the end of each task, on the task's probe set."""
    success_matrix: list[list[float | None]]
    """success_matrix[i][j]: success on task j evaluated at the end of task i (CRL; None if not seen)."""
    env_steps: int
    wall_time_s: float
    ntk_rank: list[float | None] = dataclasses.field(default_factory=list)
    """r_e(K) at the end of each task (None when `diag.enabled` or `diag.ntk` is off)."""
    ntk_top_eigenvalues: list[list[float]] = dataclasses.field(default_factory=list)
    """Top `diag.n_top` eigenvalues of K at the end of each task (the report's ellipsoids)."""
    task_end_diagnostics: list[dict[str, float]] = dataclasses.field(default_factory=list)
    """Every diagnostics metric at the end of each task (the diagnostics.csv row)."""
    task_curves: list[list[list[float]]] = dataclasses.field(default_factory=list)
    """task_curves[i]: `[task_step, success]` of every evaluation of task i during its own training."""
    initial_ntk_rank: float | None = None
    """r_e(K) of the untrained agent on task 0's probe set (the diagnostics row at env step 0)."""
    initial_ntk_top_eigenvalues: list[float] = dataclasses.field(default_factory=list)
    """Top `diag.n_top` eigenvalues of K before any training (the report's "Initialise" stage)."""
    continual: dict[str, Any] | None = None
    """CRL: Continual World averages (average performance, forgetting, forward transfer); rows in continual_metrics.csv."""

    @property
    def average_success(self) -> float:
        return float(np.mean(self.final_success)) if self.final_success else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["average_success"] = self.average_success
        return data


class Call(NamedTuple):
    """What a run's step generator (:meth:`Runner.steps`) asks its driver to compute.

    `kind` is a `loop.run_call` kind (`iteration`, `evaluate`); `own` are this run's arguments,
    `shared` the ones every run of a seed group passes alike (task parameters, learning rate) and
    `key` is the run's position (task, iteration, then evaluations before the next iteration) followed
    by what identifies the shared arguments: a driver of several runs (:mod:`.multiseed`) computes the
    calls with the smallest key together, the same computation on different seeds."""

    kind: str
    loop: Any
    own: tuple
    shared: tuple
    key: tuple


class RunDivergedError(RuntimeError):
    """More non-finite update steps than `run.max_nonfinite_updates`: the run stopped; its checkpoints are finite."""


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


class Runner:
    """Runs one configuration. `run()` starts or resumes; numbers are identical either way."""

    def __init__(self, cfg: Config, run_dir: RunDir | None = None, *, progress: bool | None = None,
                 share: "Runner | None" = None):
        """`share`: a runner of the same config but for the seed (a seed group, :mod:`.multiseed`) whose
        PPO and compiled loops this one uses too."""
        self.cfg = cfg.validate()
        self.run_dir = run_dir
        if run_dir is not None and run_dir._checkpoints is None:
            run_dir.checkpoint_keep = cfg.run.keep_checkpoints  # run.keep_checkpoints decides pruning
        self.progress = cfg.run.progress if progress is None else progress
        self.timing: dict[str, float] = {}
        """Wall-clock stamps (``time.time()``) of this process's training start and first two iterations."""
        self.tasks = list(envs.resolve_sequence(cfg.run.tasks))
        if share is not None:
            self._loops, self.obs_dim, self.action_dim, self.ppo = share._loops, share.obs_dim, share.action_dim, share.ppo
        else:
            self._loops: dict[str, tuple[Any, Any]] = {}
            spaces = {self._space_of(t) for t in self.tasks}
            if len(spaces) != 1:
                raise ValueError(f"run.tasks: all tasks of a run need the same observation and action sizes, got {sorted(spaces)}")
            self.obs_dim, self.action_dim = spaces.pop()
            self.ppo = PPO(cfg, self.obs_dim, self.action_dim)
        self.rl_probe_task = rl_probe_task(self.cfg)
        """The RL plasticity probe's env id (`diag.rl_probe_task` resolved), None when the probe is off."""
        if self.rl_probe_task is not None and share is None and self._space_of(self.rl_probe_task) != (
                self.obs_dim, self.action_dim):
            raise ConfigError(f"diag.rl_probe_task: {self.rl_probe_task} has observation and action sizes "
                              f"{self._space_of(self.rl_probe_task)}, the run's tasks {(self.obs_dim, self.action_dim)}")
        self.base_key = jax.random.PRNGKey(cfg.seed)
        self.diagnostics = RunDiagnostics(self.cfg, self.ppo, run_dir, jax.random.fold_in(self.base_key, _PROBE))
        self._all_finite = share._all_finite if share is not None else jax.jit(all_finite)

    # ------------------------------------------------------------------ envs and loops
    def _space_of(self, task: str) -> tuple[int, int]:
        if envs.is_jax_native(task):
            env, _ = envs.make_functional(task)
            return env.obs_dim, env.action_dim
        probe = envs.make(task, num_envs=1, seed=0)
        try:
            return int(np.prod(probe.single_observation_space.shape)), int(np.prod(probe.single_action_space.shape))
        finally:
            probe.close()

    def loop_for(self, task: str) -> tuple[Any, Any]:
        """(loop, env_params) for a task; JAX-native tasks of one family share one compiled loop."""
        if task not in self._loops:
            if envs.is_jax_native(task):
                env, params = envs.make_functional(task)
                shared = next((lp for lp, _ in self._loops.values() if isinstance(lp, JaxLoop) and lp.env is env), None)
                self._loops[task] = (shared or JaxLoop(self.ppo, env), params)
            else:
                self._loops[task] = (GymLoop(self.ppo, self._vector_env_factory(task)), None)
        return self._loops[task]

    def _vector_env_factory(self, task: str) -> Any:
        options = {"asynchronous": True} if self.cfg.run.async_envs else {}
        return lambda n, seed: envs.make(task, num_envs=n, seed=seed, **options)

    def _task_key(self, task_index: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(self.base_key, _TASK), task_index)

    def _eval_key(self, task_index: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(self.base_key, _EVAL), task_index)

    def _start_task(self, agent: Any, task_index: int) -> tuple[Any, Any]:
        """Agent and rollout carry at the start of a task, following the protocol."""
        agent, carry, _ = self._enter_task(agent, task_index)
        return agent, carry

    def _switched(self, agent: Any, task_index: int) -> tuple[Any, dict[str, float]]:
        """A CRL agent as it enters task `task_index` >= 1: `run.reset_optimizer`, the methods' task-switch
        interventions (with a key of the run and the task), then the task-start hooks; and the events."""
        if self.cfg.run.reset_optimizer:
            agent = self.ppo.reset_optimizer(agent)
        key = jax.random.fold_in(jax.random.fold_in(self.base_key, _SWITCH), task_index)
        agent, events = self.ppo.task_switch(agent, key, task_index)
        return self.ppo.start_task(agent), events

    def _enter_task(self, agent: Any, task_index: int) -> tuple[Any, Any, dict[str, float]]:
        """(agent, rollout carry, the task switch's events) at the start of a task, following the protocol."""
        events: dict[str, float] = {}
        if agent is None or self.cfg.run.protocol == "rl":
            agent = self.ppo.start_task(self.ppo.init(jax.random.fold_in(self.base_key, _INIT)))
        else:
            agent, events = self._switched(agent, task_index)
        loop, params = self.loop_for(self.tasks[task_index])
        agent, carry = loop.start(agent, self._task_key(task_index), params)
        return agent, carry, events

    def _finish_task(self, task_index: int) -> None:
        """Release what the task's training held (host envs: its vector env and, with `run.async_envs`,
        its `num_envs` subprocesses); evaluation makes its own envs."""
        self.loop_for(self.tasks[task_index])[0].close()

    # ------------------------------------------------------------------ evaluation and diagnostics
    def evaluate(self, agent: Any, task_index: int) -> dict[str, float]:
        loop, params = self.loop_for(self.tasks[task_index])
        out = jax.device_get(loop.evaluate(agent, params, self._eval_key(task_index)))
        return {"return": float(out["return"]), "success": float(out["success"])}

    def _intervene(self, agent: Any, t: int, it: int, state: dict[str, Any], logger: Any) -> Any:
        """The methods' after-iteration interventions (e.g. ReDo) on the task's probe states; logs their events."""
        obs = self.ppo.normalize_obs(agent, jnp.asarray(self.diagnostics.probes[t].states))
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(self.base_key, _ITERATION), t), it)
        agent, events = self.ppo.after_iteration(agent, obs, key, it)
        if logger:
            for what, value in events.items():
                logger.log("events", {"env_step": state["env_step"], "task_index": t, "task": self.tasks[t],
                                      "event": what, "value": value})
        return agent

    def _rl_probe(self, agent: Any, t: int, state: dict[str, Any]) -> Generator[Call, Any, dict[str, float]]:
        """The RL plasticity probe of `agent` after task `t` (-1: at initialisation); {} when it is off.

        A copy of the agent starts the held-out task as the next CRL task switch would
        (`run.reset_optimizer`, the methods' task-switch interventions with the key of task t + 1, then
        `PPO.start_task`; at initialisation the fresh agent as it is), is evaluated, trains
        `diag.rl_probe_steps` env steps (whole rollouts, the task's learning-rate schedule from its start)
        and is evaluated again; the copy is then dropped, so the run itself is unchanged. Its calls are yielded like the run's own, so a seed group
        computes the probes of all its seeds together."""
        task = self.rl_probe_task
        if task is None:
            return {}
        cfg = self.cfg
        loop, params = self.loop_for(task)
        key = jax.random.fold_in(jax.random.fold_in(self.base_key, _RL_PROBE), t + 1)
        probe = self._switched(agent, t + 1)[0] if t >= 0 else agent  # t = -1: the fresh agent as it is
        where = (t, state["iteration"], 2)
        eval_key = jax.random.fold_in(key, 1)
        before = jax.device_get((yield Call("evaluate", loop, (probe, eval_key), (params,), (*where, 0, id(params)))))
        probe, carry = loop.start(probe, jax.random.fold_in(key, 0), params)
        successes, returns = [], []
        for i in range(-(-cfg.diag.rl_probe_steps // cfg.batch_size)):
            lr = float(self.ppo.iteration_learning_rate(i))
            probe, carry, metrics = yield Call("iteration", loop, (probe, carry), (params, jnp.asarray(lr, jnp.float32)),
                                               (*where, 1, i, id(params), lr))
            metrics = jax.device_get(metrics)
            episodes = float(metrics.get("episodes", 0.0))
            successes.append(float(metrics["episode_success_sum"]) / episodes if episodes else np.nan)
            returns.append(float(metrics["episode_return_sum"]) / episodes if episodes else np.nan)
        after = jax.device_get((yield Call("evaluate", loop, (probe, eval_key), (params,), (*where, 2, id(params)))))
        if not any(lp is loop for name, (lp, _) in self._loops.items() if name in self.tasks):
            loop.close()  # a host env of its own (the training tasks' loops are closed at their ends)
        return {
            "rlprobe/initial": float(before["success"]), "rlprobe/final": float(after["success"]),
            "rlprobe/auc": _nanmean(successes), "rlprobe/initial_return": float(before["return"]),
            "rlprobe/final_return": float(after["return"]), "rlprobe/return_auc": _nanmean(returns),
        }

    def _diagnose(self, agent: Any, t: int, state: dict[str, Any], logger: Any, task_end: bool,
                  extra: dict[str, float] | None = None) -> None:
        """Log a diagnostics row when due; at a task end also record the summary's spectral numbers.
        `extra`: more columns for the row (the RL probe's)."""
        enabled = self.cfg.diag.enabled
        if not enabled and not task_end:
            return
        diagnosis = self.diagnostics.measure(agent, t, full=enabled, fit=enabled and task_end)
        metrics = {**diagnosis.metrics, **(extra or {})}
        if logger and enabled:
            logger.log("diag", {
                "env_step": state["env_step"], "task_index": t, "task": self.tasks[t],
                "task_step": state["iteration"] * self.cfg.batch_size, "task_end": task_end, **metrics,
            })
        if task_end:
            state["proxy"].append(metrics["proxy/effective_rank"])
            state["ntk_rank"].append(metrics.get("ntk/effective_rank"))
            n_top = self.cfg.diag.n_top
            has_ntk = diagnosis.ntk_eigenvalues is not None
            state["ntk_top"].append([metrics[f"ntk/eig_{i + 1}"] for i in range(n_top)] if has_ntk else [])
            state["task_end_diag"].append(metrics)

    def _diagnose_initial(self, agent: Any, state: dict[str, Any], logger: Any,
                          extra: dict[str, float] | None = None) -> None:
        """The untrained agent on task 0's probe set: the spectrum every method starts from (env step 0).
        `extra`: more columns for the row (the RL probe's)."""
        state["initial"] = {"ntk_rank": None, "ntk_top": []}
        if not self.cfg.diag.enabled:
            return
        diagnosis = self.diagnostics.measure(agent, 0, full=True, fit=True)
        metrics = {**diagnosis.metrics, **(extra or {})}
        if logger:
            logger.log("diag", {"env_step": 0, "task_index": 0, "task": self.tasks[0], "task_step": 0,
                                "task_end": False, **metrics})
        if diagnosis.ntk_eigenvalues is not None:
            state["initial"] = {"ntk_rank": metrics.get("ntk/effective_rank"),
                                "ntk_top": [metrics[f"ntk/eig_{i + 1}"] for i in range(self.cfg.diag.n_top)]}

    # ------------------------------------------------------------------ the run
    def checkpoint_target(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A pytree with the structure of the checkpoint whose meta is `meta`, to restore into.

        Since 0.5 a checkpoint also holds the probe states and the anchor (actor at the task's start) of
        task `meta["probe_task"]`; older ones hold the agent and the rollout carry only."""
        agent, carry = self._start_task(None, min(int(meta["task_index"]), len(self.tasks) - 1))
        tree = {"agent": agent, "carry": carry}
        if "probe_shape" in meta:
            tree["probe"] = np.zeros(tuple(meta["probe_shape"]), np.float32)
            tree["anchor"] = agent.params["actor"]
        return tree

    def _checkpoint(self, agent: Any, carry: Any, t: int, state: dict[str, Any], logger: Any) -> None:
        """Write the checkpoint of the current env step: the agent, the rollout carry, task `t`'s probe states
        and anchor, and in the meta the run's state and the CSV tables' state (made durable first)."""
        probe = self.diagnostics.probes[t].states
        tree = {"agent": agent, "carry": carry, "probe": probe, "anchor": self.diagnostics.anchors[t]}
        meta = {**state, "probe_task": t, "probe_shape": list(probe.shape), "tables": logger.checkpoint_tables()}
        self.run_dir.checkpoints.save(state["env_step"], tree, meta=meta)

    def load_checkpoint(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any], int]:
        """(tree, meta, step) of checkpoint `step` of this run (the latest good one when None)."""
        manager = self.run_dir.checkpoints
        if step is None:
            return manager.restore_latest(self.checkpoint_target)
        tree, meta = manager.restore(step, self.checkpoint_target)
        return tree, meta, step

    def run(self, resume: bool = False) -> RunResult:
        """Train (or, with ``resume``, continue) the run; holds the run directory's writer lock throughout
        (:class:`~sphere_rl.runs.run_dir.RunInUseError` when another process is writing it)."""
        if self.run_dir is None:
            if resume:
                raise ValueError("resume needs a run directory")
            return self._drive(self.steps(resume))
        with self.run_dir.lock("training: Runner.run"):
            if resume:
                self.run_dir.remove_stale_temp_files()
            return self._drive(self.steps(resume))

    @staticmethod
    def _drive(steps: Generator[Call, Any, RunResult]) -> RunResult:
        """Run one step generator to its end, computing every call it makes."""
        try:
            call = next(steps)
            while True:
                call = steps.send(call.loop.run_call(call.kind, call.own, call.shared))
        except StopIteration as stop:
            return stop.value

    def steps(self, resume: bool, max_step: int | None = None) -> Generator[Call, Any, RunResult]:
        """The run as a generator: it yields a :class:`Call` wherever it needs an iteration or an
        evaluation computed and is sent the result; it returns the :class:`RunResult`. The caller holds
        the run directory's lock. `max_step`: resume from the newest checkpoint at or before it (none
        there: from step 0, in place)."""
        cfg, batch = self.cfg, self.cfg.batch_size
        iterations = cfg.iterations_per_task
        total_steps = iterations * batch * len(self.tasks)
        state: dict[str, Any] = {
            "task_index": 0, "iteration": 0, "env_step": 0, "window": {}, "wall_time": 0.0, "nonfinite_updates": 0,
            "final": [], "matrix": [], "proxy": [], "ntk_rank": [], "ntk_top": [], "task_end_diag": [], "curves": [],
        }
        agent = carry = None
        logger = None
        if self.run_dir is not None:
            logger = self.run_dir.logger(tensorboard=cfg.run.tensorboard, wandb=cfg.run.wandb, task_key="eval_task")
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs a run directory")
            steps = [s for s in self.run_dir.checkpoints.all_steps() if max_step is None or s <= max_step]
            if not steps:
                # killed before its first checkpoint: start again from step 0 in place
                logger.truncate_after(step_col="env_step", step=-1)
            else:
                state, agent, carry, tables = self._restore(max_step)
                if tables is None:  # a checkpoint of a version before 0.5
                    logger.truncate_after(step_col="env_step", step=state["env_step"])
                else:
                    logger.restore_tables(tables, state["env_step"])
            self.run_dir.write_manifest(seed=cfg.seed)  # records this session under the manifest's "resumes"

        t_start = time.perf_counter() - state["wall_time"]
        bar = tqdm(total=total_steps, initial=state["env_step"], unit="step", unit_scale=True, mininterval=2.0,
                   disable=not self.progress, dynamic_ncols=True)
        window_clock = time.perf_counter()
        try:
            while state["task_index"] < len(self.tasks):
                t = state["task_index"]
                task = self.tasks[t]
                loop, params = self.loop_for(task)
                if state["iteration"] == 0 or carry is None:
                    agent, carry, events = self._enter_task(agent, t)
                    if logger:
                        for what, value in events.items():
                            logger.log("events", {"env_step": state["env_step"], "task_index": t, "task": task,
                                                  "event": what, "value": value})
                self.diagnostics.start_task(t, task, agent, loop, params)
                if t == 0 and state["env_step"] == 0 and "initial" not in state:
                    probed = yield from self._rl_probe(agent, -1, state)
                    self._diagnose_initial(agent, state, logger, probed)
                bar.set_description(f"task {t + 1}/{len(self.tasks)} {task}")
                while state["task_index"] == t:
                    it = state["iteration"]
                    lr = jnp.asarray(self.ppo.iteration_learning_rate(it), jnp.float32)
                    if len(self.timing) < 3:  # start-up, as sweeps and `sphere bench` measure it
                        self.timing.setdefault("training_started_at", time.time())
                    previous = agent
                    agent, carry, metrics = yield Call("iteration", loop, (agent, carry), (params, lr),
                                                       (t, it, 1, id(params), float(lr)))
                    metrics = jax.device_get(metrics)
                    agent = self._guard_nonfinite(previous, agent, metrics, state, t, bar)
                    if len(self.timing) < 3:
                        self.timing.setdefault("first_iteration_at" if len(self.timing) == 1 else "second_iteration_at",
                                               time.time())
                    before, after = it * batch, (it + 1) * batch
                    state["iteration"] = it + 1
                    state["env_step"] += batch
                    if self.ppo.acts_after_iterations:
                        agent = self._intervene(agent, t, it, state, logger)
                    _accumulate(state["window"], metrics)
                    bar.update(batch)
                    last = state["iteration"] == iterations
                    if _crossed(before, after, cfg.run.log_every) or last:
                        now = time.perf_counter()
                        row = _train_row(state, task, t, batch, now - window_clock, now - t_start)
                        bar.set_postfix(sps=f"{row['steps_per_s']:.0f}", ret=f"{row['episode_return']:.1f}",
                                        succ=f"{row['success']:.2f}")
                        if logger:
                            logger.log("train", row)
                        state["window"] = {}
                        window_clock = now
                    if _crossed(before, after, cfg.run.eval_every) or last:
                        yield from self._evaluate_seen(agent, t, state, logger, task_end=last)
                    if _crossed(before, after, self.diagnostics.every) or last:
                        probed = (yield from self._rl_probe(agent, t, state)) if last else {}
                        self._diagnose(agent, t, state, logger, task_end=last, extra=probed)
                    if last:
                        state["task_index"], state["iteration"] = t + 1, 0
                        self._finish_task(t)
                    if self.run_dir is not None and (_crossed(before, after, cfg.run.checkpoint_every) or last):
                        state["wall_time"] = time.perf_counter() - t_start
                        self._checkpoint(agent, carry, t, state, logger)
        finally:
            bar.close()
            if logger:
                logger.close()
            for loop, _ in self._loops.values():
                loop.close()

        result = RunResult(
            run_dir=str(self.run_dir.root) if self.run_dir is not None else None,
            protocol=cfg.run.protocol,
            tasks=self.tasks,
            final_success=[f["success"] for f in state["final"]],
            final_return=[f["return"] for f in state["final"]],
            proxy_rank=state["proxy"],
            success_matrix=state["matrix"],
            env_steps=state["env_step"],
            wall_time_s=time.perf_counter() - t_start,
            ntk_rank=state.get("ntk_rank", []),
            ntk_top_eigenvalues=state.get("ntk_top", []),
            task_end_diagnostics=state.get("task_end_diag", []),
            task_curves=state.get("curves", []),
            initial_ntk_rank=(state.get("initial") or {}).get("ntk_rank"),
            initial_ntk_top_eigenvalues=(state.get("initial") or {}).get("ntk_top", []),
        )
        if cfg.run.protocol == "crl" and len(result.success_matrix) == len(self.tasks):
            metrics = self.continual_metrics(result)
            result.continual = metrics.summary()
            if self.run_dir is not None:
                atomic_write_text(self.run_dir.root / CONTINUAL_METRICS_FILE, metrics.to_csv())
        if self.run_dir is not None:
            self.run_dir.mark_complete(result.to_dict())
        return result

    def _guard_nonfinite(self, previous: Any, agent: Any, metrics: dict[str, Any], state: dict[str, Any], t: int,
                         bar: Any) -> Any:
        """Count the iteration's skipped non-finite update steps; an agent that is not finite after the
        iteration (e.g. from non-finite observations) is replaced by the one before it, and counts as one
        more. Past `run.max_nonfinite_updates` in the run: :class:`RunDivergedError`."""
        bad = int(metrics.get("nonfinite_updates", 0))
        if not bool(self._all_finite(agent)):
            agent, bad = previous, bad + 1
            metrics["nonfinite_updates"] = float(bad)
        if not bad:
            return agent
        state["nonfinite_updates"] = state.get("nonfinite_updates", 0) + bad
        limit = self.cfg.run.max_nonfinite_updates
        where = f"env step {state['env_step'] + self.cfg.batch_size}, task {t} ({self.tasks[t]})"
        bar.write(f"warning: {bad} non-finite update step(s) skipped at {where}; "
                  f"{state['nonfinite_updates']} in this run (run.max_nonfinite_updates={limit})", file=sys.stderr)
        if state["nonfinite_updates"] > limit:
            last = self.run_dir.checkpoints.latest_step() if self.run_dir is not None else None
            kept = f"; its last checkpoint (env step {last}) is finite" if last is not None else ""
            raise RunDivergedError(
                f"run diverged: {state['nonfinite_updates']} update steps had a non-finite loss, gradient or result "
                f"(limit run.max_nonfinite_updates={limit}), the last at {where}{kept}; "
                "lower ppo.lr or ppo.max_grad_norm, or check the env's observations and rewards")
        return agent

    def continual_metrics(self, result: RunResult) -> ContinualMetrics:
        """Continual World metrics of a finished CRL run (forward transfer needs `run.reference_run`)."""
        reference = self.cfg.run.reference_run
        curves = reference_curves(reference, self.cfg.task_steps) if reference else None
        return continual_metrics(result.tasks, result.success_matrix, result.task_curves, self.cfg.task_steps, curves,
                                 reference or None)

    def _evaluate_seen(self, agent: Any, t: int, state: dict[str, Any], logger: Any,
                       task_end: bool) -> Generator[Call, Any, None]:
        run = self.cfg.run
        if run.protocol == "crl" and run.eval_all_tasks:
            seen = range(len(self.tasks) if run.eval_future_tasks else t + 1)
        else:
            seen = [t]
        curves = state.setdefault("curves", [])
        while len(curves) <= t:
            curves.append([])
        row_at_end: list[float | None] = [None] * len(self.tasks)
        for j in seen:
            loop, params = self.loop_for(self.tasks[j])
            out = yield Call("evaluate", loop, (agent, self._eval_key(j)), (params,),
                             (t, state["iteration"], 0, j))
            out = jax.device_get(out)
            result = {"return": float(out["return"]), "success": float(out["success"])}
            if logger:
                logger.log("eval", {
                    "env_step": state["env_step"], "task_index": t, "task": self.tasks[t],
                    "task_step": state["iteration"] * self.cfg.batch_size,
                    "eval_task_index": j, "eval_task": self.tasks[j], **result,
                })
            row_at_end[j] = result["success"]
            if j == t:
                curves[t].append([state["iteration"] * self.cfg.batch_size, result["success"]])
                if task_end:
                    state["final"].append(result)
        if task_end:
            state["matrix"].append(row_at_end)

    def _restore(self, max_step: int | None = None) -> tuple[dict[str, Any], Any, Any, dict[str, Any] | None]:
        """(run state, agent, carry, CSV tables' state or None) from the newest valid checkpoint; the probe
        states and anchor it holds go to the diagnostics."""
        manager = self.run_dir.checkpoints
        if manager.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {self.run_dir.root}; nothing to resume")
        tree, meta, _ = manager.restore_latest(self.checkpoint_target, max_step=max_step)
        state = dict(meta)
        tables = state.pop("tables", None)
        probe_task = state.pop("probe_task", None)
        state.pop("probe_shape", None)
        if probe_task is not None:
            self.diagnostics.restore(probe_task, self.tasks[probe_task], tree["probe"], tree["anchor"])
        agent, carry = tree["agent"], tree["carry"]
        if state["task_index"] >= len(self.tasks) or state["iteration"] == 0:
            carry = None  # finished, or at a task boundary: the next task starts fresh from the agent
        elif not envs.is_jax_native(self.tasks[state["task_index"]]):
            loop, params = self.loop_for(self.tasks[state["task_index"]])
            agent, carry = loop.start(agent, carry.key, params)  # host envs cannot be restored
        return state, agent, carry, tables


def _accumulate(window: dict[str, float], metrics: dict[str, Any]) -> None:
    window["iterations"] = window.get("iterations", 0) + 1
    for k, v in metrics.items():
        window[k] = window.get(k, 0.0) + float(v)


def _train_row(state: dict[str, Any], task: str, t: int, batch: int, window_seconds: float, total_seconds: float) -> dict[str, Any]:
    w = state["window"]
    n_iter = max(w.get("iterations", 1), 1)
    episodes = w.get("episodes", 0.0)
    row: dict[str, Any] = {
        "env_step": state["env_step"],
        "task_index": t,
        "task": task,
        "task_step": state["iteration"] * batch,
        "episodes": episodes,
        "episode_return": w.get("episode_return_sum", 0.0) / episodes if episodes else float("nan"),
        "episode_length": w.get("episode_length_sum", 0.0) / episodes if episodes else float("nan"),
        "success": w.get("episode_success_sum", 0.0) / episodes if episodes else float("nan"),
    }
    for k, v in w.items():
        if k not in EPISODE_KEYS and k not in ("iterations", "nonfinite_updates"):
            row[k] = v / n_iter
    row["nonfinite_updates"] = w.get("nonfinite_updates", 0.0)  # a count over the window, not a mean
    # Timing columns are the only ones that differ between identical runs.
    row["steps_per_s"] = 0.0 if window_seconds <= 0 else n_iter * batch / window_seconds
    row["wall_time_s"] = total_seconds
    return row


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")

