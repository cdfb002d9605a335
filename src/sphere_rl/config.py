"""Typed, validated run configuration: dataclasses, dotted overrides, presets and (de)serialisation.

One `Config` describes a whole run. It is frozen (hashable), so it can be a static argument of
jitted functions. Every field is documented in place; `docs/config.md` lists them all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value. The message names the offending field."""


@dataclass(frozen=True)
class NetConfig:
    """Actor and critic architectures (SPEC §4: official defaults)."""

    actor: str = "topk_moe"
    """Actor kind, a key of the actor registry: `mlp`, `topk_moe`, `dense_moe`, `ds_moe`."""
    hidden_sizes: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths of the dense actor and of every expert."""
    n_experts: int = 10
    """Number of (routed) experts E."""
    top_k: int = 2
    """Experts kept per state by Top-K and DS-MoE routing."""
    n_shared: int = 1
    """DS-MoE only: experts that are always on (gate weight 1)."""
    gate_hidden_sizes: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the gating MLP (the official gate is an MLP 3x256 -> E logits)."""
    gate_temperature: float = 1.0
    """Softmax temperature of the router."""
    critic: str = "mlp"
    """Critic kind: `mlp` (official) or an MoE kind for an MoE critic."""
    critic_hidden_sizes: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the dense critic (and of the experts of an MoE critic)."""
    log_std_init: float = 0.0
    """Initial value of the state-independent log standard deviation."""
    activation: str = "relu"
    """Hidden activation: `relu`, `tanh` or `crelu` ([ReLU(x), ReLU(-x)]: each hidden layer's output is twice
    its width; method `crelu`)."""
    layer_norm: bool = False
    """A LayerNorm after every hidden Dense (actor, experts, gating MLP, critic), before the activation: the
    official SPHERE code's `use_layer_norm` (method `layernorm`)."""
    diag_layer: bool = False
    """A learnable diagonal layer (x * scale + bias, scale 1 and bias 0 at init) right after every hidden Dense
    (actor, experts, gating MLP, critic): the Parseval code's `add_diag_layer` (`parseval.diag_layer`)."""
    load_balance_coef: float = 0.0
    """Weight of the auxiliary load-balancing loss (Switch-Transformer form); 0 disables it."""
    dispatch: str = "sparse"
    """How Top-K experts are evaluated: `sparse` (only the selected experts, exact) or `dense`
    (all experts, masked; the official way and the test reference)."""
    init: str = "official"
    """Weight initialisation of every layer: `official` (Flax's default `nn.Dense` init, as the official
    code with SBX's `ortho_init` off: LeCun-normal kernels, variance 1/fan_in per expert, zero biases)
    or `orthogonal` (orthogonal, gain sqrt(2) for hidden layers, 0.01 for action and router heads,
    1 for value heads; the usual PPO init and this library's default before 0.3)."""


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters. Defaults are the official HumanoidBench settings (SPEC §5)."""

    num_envs: int = 128
    """Parallel environments per rollout."""
    n_steps: int = 16
    """Steps per environment per rollout (batch = num_envs * n_steps)."""
    minibatch_size: int = 64
    """Samples per gradient step."""
    n_epochs: int = 10
    """Passes over the rollout batch per update phase."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip. Not one global norm over all parameters: the actor's gradient and the
    critic's gradient are each clipped to this norm on their own (each network has its own optimiser,
    as in SBX and the official code)."""
    lr: float = 3e-4
    """Initial learning rate (and the starting point of the KL-adaptive learning rate)."""
    lr_final: float = 1e-4
    """Schedule (used when `kl_mode` is not `adaptive_lr`): the learning rate reached at
    `lr_end_fraction` of each task, kept until its end. Restarted per task."""
    lr_end_fraction: float = 0.5
    """Schedule: fraction of each task's steps over which the learning rate goes linearly from `lr` to
    `lr_final` (official `lin_3e-4_1e-4_0.5`: 0.5; SB3's plain linear schedule: 1.0)."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    kl_mode: str = "adaptive_lr"
    """What `target_kl` does. `adaptive_lr` (official with a target, SBX/rsl_rl rule): after every
    minibatch, lr /= 1.5 if approx KL > 2 target, lr *= 1.5 if approx KL < target / 2, clipped to
    [kl_lr_min, kl_lr_max], written into both Adam states; the schedule is not used. `early_stop`
    (SB3): the update phase stops at the first minibatch whose approx KL exceeds 1.5 target; the
    schedule is used. `none`: target_kl is not used; the schedule is."""
    target_kl: float | None = 0.03
    """Target approximate KL per minibatch for `kl_mode` `adaptive_lr` or `early_stop` (required by
    both; ignored by `none`)."""
    kl_lr_min: float = 1e-5
    """`adaptive_lr`: lower clip of the learning rate (rsl_rl/SBX: 1e-5)."""
    kl_lr_max: float = 1e-2
    """`adaptive_lr`: upper clip of the learning rate (rsl_rl/SBX: 1e-2)."""
    kl_lr_factor: float = 1.5
    """`adaptive_lr`: the learning rate is divided or multiplied by this factor (rsl_rl/SBX: 1.5)."""
    kl_lr_at_task_start: str = "reset"
    """`adaptive_lr` in CRL: `reset` (official: SB3's `load` rebuilds SBX's KLAdaptiveLR at `lr` for
    every task, while the Adam states keep the last learning rate until the first minibatch of the new
    task writes the next one) or `carry` (the adaptive rate continues where the previous task left it)."""
    normalize_obs: bool = True
    """Running mean/variance observation normalisation (state of the agent, carried across tasks)."""
    obs_clip: float = 10.0
    """Normalised observations are clipped to [-obs_clip, obs_clip]."""
    normalize_advantage: bool = True
    """Standardise advantages per minibatch."""


KL_MODES = ("adaptive_lr", "early_stop", "none")
"""Values of `ppo.kl_mode`."""

MODE_DEFAULT_COEF: dict[str, float] = {"loss": 0.05, "grad": 0.001, "fixed": 0.05}
"""Default `reg.coef` per weighting mode (official: loss 0.05, grad 0.001 in the HumanoidBench SPHERE script)."""


@dataclass(frozen=True)
class RegConfig:
    """Regulariser added to the PPO loss (SPEC §3). `name` is a key of the regulariser registry."""

    name: str = "none"
    """`none` or a registered regulariser, e.g. `sphere`."""
    mode: str = "loss"
    """How each penalty term is weighted, per network: `loss` (lambda = coef * |L_base| / L_reg with
    L_base = L_pi + c_ent L_ent for the actor, vf_coef L_V for the critic), `grad` (the term's gradient
    scaled to coef * |grad L_base| / |grad L_reg|, norms over that network's parameters) or `fixed`
    (lambda = coef)."""
    coef: float | None = None
    """Ratio for `loss`/`grad` modes, lambda for `fixed`. None (the default): the mode's own default,
    `MODE_DEFAULT_COEF`: 0.05 for `loss` and 0.001 for `grad` (the official values), 0.05 for `fixed`."""
    placement: str = "last"
    """SPHERE: `last` hidden expert layer (paper default) or `all` hidden expert layers (summed)."""
    form: str = "concat"
    """SPHERE: `concat` (Gram of concatenated routing-weighted features) or `per_expert` (sum over experts)."""
    factor: str = "forward"
    """SPHERE: the factor whose Gram is penalised: `forward` (the expert features Phi, the paper's method) or
    `gradient` (the backpropagated factor d f / d z of the last hidden pre-activation, routing-weighted and
    concatenated: the paper's gradient-factor ablation as SPEC §3 reads it; `placement=last` only)."""
    scale: str = "raw"
    """SPHERE: `raw`, the paper's L = ||A - (Tr A / D) I||_F^2, which is homogeneous of degree 4 in the
    features, so all-zero features minimise it as well as an isotropic spectrum does; or `trace`, L / (Tr A)^2
    = ||A / Tr A - I / D||_F^2, which depends only on the shape of the spectrum (our extension, not the
    paper's: docs/methods.md)."""
    routing_coef: float = 0.0
    """SPHERE: ratio (lambda in `fixed` mode) of the routing penalty, the same spectral penalty on the
    router's gate weights G (T x E routed experts, zero outside the top-k: the official
    `sphere_gating_ratio` on its top-k-masked `probs`), weighted on its own in `mode` (official
    default 0: off)."""
    critic: bool = False
    """Also penalise the critic's features (its own lambda from vf_coef L_V). The official code does
    this whenever the critic is an MoE (`apply_to.critic`); the official critic is a dense MLP."""

    @property
    def resolved_coef(self) -> float:
        """`coef`, or the default of `mode` when it is None."""
        return MODE_DEFAULT_COEF.get(self.mode, 0.05) if self.coef is None else self.coef


@dataclass(frozen=True)
class RunConfig:
    """Protocol, budget, evaluation, logging and output of a run."""

    protocol: str = "crl"
    """`crl`: one agent through the task sequence; `rl`: every task from scratch."""
    tasks: str = "arm6"
    """A named task sequence (see `sphere envs`) or a comma-separated list of env ids."""
    steps_per_task: int = 10_000_000
    """Environment steps per task."""
    reset_optimizer: bool = False
    """CRL: reset the Adam state at every task boundary (weights and normaliser always carry over)."""
    eval_every: int = 100_000
    """Evaluate every this many env steps (and at the end of each task)."""
    eval_episodes: int = 10
    """Episodes per evaluation, deterministic policy (action mean)."""
    eval_all_tasks: bool = True
    """CRL: evaluate every task seen so far, not only the current one (needed for forgetting)."""
    eval_future_tasks: bool = False
    """CRL with `eval_all_tasks`: also evaluate tasks not trained yet (Continual World evaluates all tasks)."""
    reference_run: str = ""
    """CRL: a finished `rl` run directory over the same tasks and budget, for forward transfer."""
    async_envs: bool = False
    """Gymnasium envs: step the sub-envs in subprocesses (gymnasium AsyncVectorEnv); worth it with many cores."""
    log_every: int = 20_000
    """Write a training-metrics row every this many env steps."""
    checkpoint_every: int = 200_000
    """Write a checkpoint every this many env steps (and at every task end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (older ones are pruned)."""
    max_nonfinite_updates: int = 100
    """Update steps with a non-finite loss, gradient or result (NaN/Inf) are skipped and logged; after this
    many in a run it stops as diverged, keeping its last finite checkpoint (0: stop at the first)."""
    out_dir: str = "runs"
    """Parent directory of run directories."""
    name: str = ""
    """Run directory name; empty: generated from time and config hash."""
    tensorboard: bool = True
    """Mirror metrics to TensorBoard event files under the run's tb/ folder."""
    wandb: bool = False
    """Mirror metrics to Weights & Biases (needs `wandb` installed)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class DiagConfig:
    """Spectral-plasticity diagnostics logged during training (docs/metrics.md, diagnostics.csv)."""

    enabled: bool = True
    """Log diagnostics every `every` env steps and at the end of every task."""
    every: int = 0
    """Env steps between diagnostics; 0: at every evaluation (`run.eval_every`)."""
    n_states: int = 512
    """Probe states N per task, drawn once at the task's start and stored in the run directory."""
    probe_steps: int = 32
    """Policy steps on fresh envs of the task to draw the probe set from (num_envs x probe_steps states)."""
    ntk: bool = True
    """Compute r_e(K) (exact eNTK of the action mean) at every diagnostics step, not only the cheap metrics."""
    ntk_method: str = "auto"
    """`structured` (fast exact path for networks of Dense layers), `generic` (per-state Jacobians; any network,
    slow) or `auto`: structured, and generic where the structured path cannot go (LayerNorm)."""
    ntk_reduction: str = "trace"
    """`trace`: K = sum_a J_a J_a^T (N x N); `full`: the (N*A) x (N*A) kernel."""
    n_top: int = 3
    """Top eigenvalues of K and A kept per diagnostics row."""
    dormant_tau: float = 0.025
    """ReDo threshold for dormant units."""
    memory_budget_mb: int = 2048
    """Memory the eNTK may use for Jacobian chunks / layer gradients."""
    fit_steps: int = 200
    """Target-fitting probe (Lyle et al. 2022) at every task end and at initialisation: Adam steps a copy
    of the actor takes to regress fresh random targets on the probe states (`fit/auc`, `fit/final` in
    diagnostics.csv); 0: off."""
    fit_lr: float = 1e-3
    """Learning rate of the target-fitting probe's Adam."""
    rl_probe_steps: int = 0
    """RL plasticity probe: at initialisation and every task end a copy of the agent trains this many env
    steps (rounded up to whole rollouts) on the held-out task `rl_probe_task`, starting as a CRL task
    switch would (`run.reset_optimizer`, the task-start hooks), and is thrown away; its learning curve
    gives `rlprobe/*` in diagnostics.csv. 0: off (it costs these steps at every probe point)."""
    rl_probe_task: str = "auto"
    """The RL probe's task: an env id with the run's observation and action sizes, or `auto`: the
    held-out task of the sequence's family (`arm/heldout` for the built-in suite, `humanoidbench/h1-stair`
    for H1)."""


@dataclass(frozen=True)
class L2Config:
    """Method `l2`: 0.5 sum theta^2 over every parameter, added to the loss (docs/methods.md)."""

    coef: float = 1e-3
    """lambda in `fixed` mode (Plasticine's Adam weight decay 1e-3 is this term with lambda 1e-3); the
    ratio to the base loss (`loss`) or its gradient norm (`grad`) otherwise."""
    mode: str = "fixed"
    """How the term is weighted: `fixed`, `loss` or `grad` (as `reg.mode`)."""
    networks: str = "both"
    """`actor`, `critic` or `both`."""


@dataclass(frozen=True)
class L2InitConfig:
    """Method `l2_init` (regenerative regularisation): 0.5 sum (theta - theta_0)^2 added to the loss."""

    coef: float = 1e-2
    """lambda in `fixed` mode: Kumar et al.'s value 1e-2 with the official code's 0.5 factor; the ratio
    in `loss`/`grad` mode."""
    mode: str = "fixed"
    """How the term is weighted: `fixed`, `loss` or `grad` (as `reg.mode`)."""
    networks: str = "both"
    """`actor`, `critic` or `both`."""
    anchor: str = "init"
    """theta_0: `init` (the very first parameters, the paper's) or `task` (the parameters at each task's start)."""


@dataclass(frozen=True)
class ParsevalConfig:
    """Method `parseval`: sum over hidden layers of (64 / width)^2 ||W W^T - s I||_F^2 (docs/methods.md)."""

    coef: float = 1e-3
    """lambda in `fixed` mode (the official MetaWorld value; CARL tasks used 1e-4); the ratio in `loss`/`grad`."""
    mode: str = "fixed"
    """How the term is weighted: `fixed`, `loss` or `grad` (as `reg.mode`)."""
    networks: str = "both"
    """`actor`, `critic` or `both` (official: both)."""
    scale: float | None = None
    """s, the target squared norm of each neuron's incoming weights; None: the initialisation's (1 for
    `net.init=official`, LeCun normal; 2 for `orthogonal` with gain sqrt(2), the official code's)."""
    diag_layer: bool = True
    """A learnable diagonal layer after every hidden Dense (sets `net.diag_layer`), as the official MetaWorld runs
    (`add_diag_layer=True`): it gives back the per-unit scale the orthogonality penalty takes away."""


@dataclass(frozen=True)
class CChainConfig:
    """Method `cchain` (C-CHAIN): penalise churn, the change one update makes to the outputs on a second
    minibatch (docs/methods.md)."""

    coef: float = 0.05
    """The ratio to |L_pi| in `loss` mode (the official DMC target 0.05); lambda in `fixed` mode."""
    mode: str = "loss"
    """How the term is weighted: `loss` (the official rule per minibatch: coef * |L_pi| / L_churn; the
    official code averages both over a window of iterations), `fixed` or `grad`."""
    networks: str = "actor"
    """`actor` (official), `critic` or `both`."""


@dataclass(frozen=True)
class RedoConfig:
    """Method `redo`: recycle dormant hidden units every `every` update phases (docs/methods.md)."""

    tau: float = 0.025
    """A unit is dormant when its score (mean |activation| over the layer's mean) is <= tau: the ReDo
    paper's value for its default setting and Plasticine's (the paper uses 0.1 elsewhere)."""
    every: int = 10
    """Update phases (PPO iterations) between recyclings: Plasticine's PPO setting (10 iterations)."""
    networks: str = "both"
    """`actor`, `critic` or `both`."""


@dataclass(frozen=True)
class ShrinkPerturbConfig:
    """Method `shrink_perturb`: theta <- shrink * theta + perturb * theta_fresh at task switches and/or every
    `every` update phases (docs/methods.md)."""

    shrink: float = 0.4
    """Factor on the current parameters: the example of Ash & Adams' code (JordanAsh/warm_start README)."""
    perturb: float = 0.1
    """Factor on a fresh sample of the network's initialisation (same README example)."""
    at_switch: bool = True
    """Apply it at every CRL task switch (the paper's moment: when new data arrive)."""
    every: int = 0
    """Also apply it every `every` update phases (0: never; the per-update variant wants shrink near 1)."""
    networks: str = "both"
    """`actor`, `critic` or `both`."""
    moments: str = "zero"
    """`zero`: the Adam moments of the changed networks are zeroed (as `reset`); `keep`: left as they are."""


@dataclass(frozen=True)
class InjectionConfig:
    """Method `injection`: plasticity injection, once per run (docs/methods.md)."""

    at_task: int = 1
    """Inject at the start of this CRL task (1: the second task, the first switch; 0: not at a switch)."""
    after_iterations: int = 0
    """Inject after this many update phases of a task (the paper's single-task use; 0: never). With both
    set, the first of the two injects and the other does nothing."""
    networks: str = "both"
    """`actor`, `critic` or `both`."""


@dataclass(frozen=True)
class TracConfig:
    """Method `trac`: the TRAC parameter-free wrapper around each network's Adam (docs/methods.md)."""

    betas: tuple[float, ...] = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
    """Discount factors of TRAC's scale estimators (official default: six, 0.9 ... 0.999999)."""
    s_prev: float = 1e-8
    """The scale constant (official name `s_prev`; default 1e-8)."""
    eps: float = 1e-8
    """Numerical constant of TRAC's updates (official default 1e-8)."""
    variant: str = "torch"
    """`torch`: the official PyTorch rule (s starts at 0, scale max(sum s, 0)); `jax`: the official optax file's
    (s starts at s_prev, no clamp)."""


@dataclass(frozen=True)
class ResetConfig:
    """Method `reset`: re-initialise parts of the agent at every CRL task switch (docs/methods.md)."""

    parts: tuple[str, ...] = ("all",)
    """What to re-initialise: any of `all` (actor and critic), `actor`, `critic`, `heads` (action-mean and
    value heads), `gate` (an MoE actor's router), `log_std`. Adam moments of reset parameters are zeroed."""


@dataclass(frozen=True)
class Config:
    """Everything that defines a run."""

    seed: int = 0
    methods: tuple[str, ...] = ()
    """Plasticity methods switched on (`sphere methods` lists them), e.g. `[reset]`; their settings are in
    their own sections. `reg.name=sphere` and `net.load_balance_coef > 0` also switch on SPHERE and load
    balancing."""
    net: NetConfig = field(default_factory=NetConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    run: RunConfig = field(default_factory=RunConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
    reset: ResetConfig = field(default_factory=ResetConfig)
    l2: L2Config = field(default_factory=L2Config)
    l2_init: L2InitConfig = field(default_factory=L2InitConfig)
    parseval: ParsevalConfig = field(default_factory=ParsevalConfig)
    redo: RedoConfig = field(default_factory=RedoConfig)
    cchain: CChainConfig = field(default_factory=CChainConfig)
    shrink_perturb: ShrinkPerturbConfig = field(default_factory=ShrinkPerturbConfig)
    trac: TracConfig = field(default_factory=TracConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)

    # -- derived quantities -------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.ppo.num_envs * self.ppo.n_steps

    @property
    def n_minibatches(self) -> int:
        return self.batch_size // self.ppo.minibatch_size

    @property
    def iterations_per_task(self) -> int:
        """Rollout + update iterations per task (the step budget rounded up to whole rollouts)."""
        return -(-self.run.steps_per_task // self.batch_size)

    @property
    def task_steps(self) -> int:
        """Env steps each task actually trains: `run.steps_per_task` rounded up to whole rollouts."""
        return self.iterations_per_task * self.batch_size

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, prefix="")

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "Config":
        """A Config from a saved run's config dict, migrating layouts older than 0.3 (see `migrate`)."""
        return cls.from_dict(migrate(data))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def override(self, overrides: list[str] | dict[str, Any]) -> "Config":
        """Apply dotted overrides, e.g. `["ppo.lr=1e-3", "net.actor=mlp", "seed=3"]`.

        A `reg.coef` equal to the default of the current `reg.mode` (a resolved default) follows a
        change of `reg.mode` unless the same overrides set `reg.coef`: `reg.mode=grad` alone never
        keeps the loss-mode ratio 0.05, 50x the official grad-mode value.
        """
        data = self.to_dict()
        items = list(overrides.items() if isinstance(overrides, dict) else map(_split_override, overrides))
        for key, value in items:
            _set_dotted(data, key, value)
        keys = {key for key, _ in items}
        if "reg.mode" in keys and "reg.coef" not in keys and self.reg.coef == MODE_DEFAULT_COEF.get(self.reg.mode):
            data["reg"]["coef"] = None
        cfg = Config.from_dict(data)
        return cfg.resolved() if self.reg.coef is not None and cfg.reg.coef is None else cfg

    def resolved(self) -> "Config":
        """The same config with every "default of its mode" value filled in (`reg.coef`)."""
        if self.reg.coef is not None or self.reg.mode not in MODE_DEFAULT_COEF:
            return self
        return dataclasses.replace(self, reg=dataclasses.replace(self.reg, coef=self.reg.resolved_coef))

    def validate(self) -> "Config":
        """Raise ConfigError naming the first bad field; return self when valid."""
        _validate(self)
        return self


# ---------------------------------------------------------------------------------------
# building from dicts with type coercion
# ---------------------------------------------------------------------------------------

def _split_override(text: str) -> tuple[str, str]:
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    if not isinstance(key, str):
        raise ConfigError(f"override key {key!r} must be a dotted field name like section.field")
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown config section {'.'.join(parts[: i + 1])!r} in override {key!r}")
        node = node[part]
    if parts[-1] not in node:
        known = ", ".join(k if isinstance(k, str) and k.isprintable() else repr(k) for k in sorted(node, key=str))
        raise ConfigError(f"unknown config field {key!r}; fields here: {known}")
    node[parts[-1]] = value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config field {prefix + str(sorted(unknown, key=str)[0])!r}; "
                          f"fields here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], prefix + f.name)
    return cls(**kwargs)


_INT_LIMIT = 2**31
"""Integers in a config (seeds, sizes, step counts) stay below this; larger values are typos."""


def _parse_list(text: str) -> Any:
    """A list from override text: JSON (`["reset", "sphere"]`, `[64, 64]`, what a sweep spec's mapping
    writes) or comma-separated words with optional brackets and quotes (`[reset,sphere]`, `64,64`)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return [v.strip().strip("'\"") for v in stripped.strip("()[] ").split(",") if v.strip().strip("'\"")]


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, name + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = _parse_list(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(_coerce(elem, v, name) for v in value)
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = float(value.replace("_", "")) if any(c in value for c in ".eE") else int(value.replace("_", ""))
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if abs(value) >= _INT_LIMIT:
                raise ConfigError(f"{name} must be below 2**31 in magnitude, got {value!r}")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return value
        if tp is str:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):  # a list, mapping or None
                raise ValueError
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise ConfigError(f"{name} must be of type {tp.__name__}, got {value!r}") from None
    return value


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

def _check(cond: bool, name: str, message: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name} {message}, got {value!r}")


_NAME_MAX, _PATH_MAX = 255, 4000
"""Bytes in one file name and in a whole path (Linux: NAME_MAX 255, PATH_MAX 4096 with room for the run's files)."""


def _path_ok(path: str) -> bool:
    """Whether the OS can take `path`: encodable, no NUL, no folder name longer than `_NAME_MAX` bytes."""
    try:
        raw = os.fsencode(path)
    except UnicodeError:  # a lone surrogate (e.g. \ud800 in a config.json)
        return False
    return b"\0" not in raw and all(len(part) <= _NAME_MAX for part in raw.split(os.fsencode(os.sep)))


def ntk_method(cfg: Config) -> str:
    """The eNTK path a run uses: `diag.ntk_method`, with `auto` resolved (generic when the resolved network has
    LayerNorm, which the structured path does not handle; structured otherwise)."""
    from sphere_rl import methods

    if cfg.diag.ntk_method != "auto":
        return cfg.diag.ntk_method
    net = methods.resolved_net(cfg)
    return "generic" if net.layer_norm or net.diag_layer else "structured"


def rl_probe_task(cfg: Config) -> str | None:
    """The RL plasticity probe's env id (`diag.rl_probe_task`, `auto` resolved), None when it is off
    (`diag.rl_probe_steps` 0 or diagnostics off) or `auto` finds no held-out task."""
    from sphere_rl import envs

    d = cfg.diag
    if not (d.enabled and d.rl_probe_steps):
        return None
    if d.rl_probe_task == "auto":
        return envs.heldout_task(envs.resolve_sequence(cfg.run.tasks))
    try:
        return envs.validate_env_id(d.rl_probe_task)
    except ValueError as err:
        raise ConfigError(f"diag.rl_probe_task: {err}") from None


def _validate(cfg: Config) -> None:
    from sphere_rl import envs, methods, nets, regularizers  # registries; imported lazily to avoid cycles

    n, p, r, run = cfg.net, cfg.ppo, cfg.reg, cfg.run
    _check(cfg.seed >= 0, "seed", "must be >= 0", cfg.seed)
    for name in cfg.methods:
        _check(name in methods.METHODS, "methods", f"must list registered methods ({', '.join(sorted(methods.METHODS))}; "
               "`sphere methods` describes them)", name)
    _check(len(set(cfg.methods)) == len(cfg.methods), "methods", "must not repeat a method", list(cfg.methods))
    if "load_balance" in cfg.methods:
        _check(n.load_balance_coef > 0, "net.load_balance_coef", "must be > 0 when methods lists load_balance",
               n.load_balance_coef)
    for prefix in ("l2", "l2_init", "parseval", "cchain"):
        section = getattr(cfg, prefix)
        _check(section.coef >= 0, f"{prefix}.coef", "must be >= 0", section.coef)
        _check(section.mode in ("loss", "grad", "fixed"), f"{prefix}.mode", "must be 'loss', 'grad' or 'fixed'",
               section.mode)
        _check(section.networks in ("actor", "critic", "both"), f"{prefix}.networks",
               "must be 'actor', 'critic' or 'both'", section.networks)
    _check(cfg.parseval.scale is None or cfg.parseval.scale > 0, "parseval.scale", "must be > 0 (or none: the init's)",
           cfg.parseval.scale)
    _check(cfg.l2_init.anchor in ("init", "task"), "l2_init.anchor", "must be 'init' or 'task'", cfg.l2_init.anchor)
    _check(0.0 <= cfg.redo.tau < 1.0, "redo.tau", "must be in [0, 1)", cfg.redo.tau)
    _check(1 <= cfg.redo.every <= 10_000_000, "redo.every", "must be in [1, 10000000] (update phases)", cfg.redo.every)
    _check(cfg.redo.networks in ("actor", "critic", "both"), "redo.networks", "must be 'actor', 'critic' or 'both'",
           cfg.redo.networks)
    sp = cfg.shrink_perturb
    _check(sp.shrink >= 0, "shrink_perturb.shrink", "must be >= 0", sp.shrink)
    _check(sp.perturb >= 0, "shrink_perturb.perturb", "must be >= 0", sp.perturb)
    _check(0 <= sp.every <= 10_000_000, "shrink_perturb.every", "must be in [0, 10000000] (update phases; 0: never)",
           sp.every)
    _check(sp.networks in ("actor", "critic", "both"), "shrink_perturb.networks", "must be 'actor', 'critic' or 'both'",
           sp.networks)
    _check(sp.moments in ("zero", "keep"), "shrink_perturb.moments", "must be 'zero' or 'keep'", sp.moments)
    if "shrink_perturb" in cfg.methods:
        _check(sp.at_switch or sp.every > 0, "shrink_perturb.every",
               "must be > 0 when shrink_perturb.at_switch is false (else it never fires)", sp.every)
    inj = cfg.injection
    _check(0 <= inj.at_task <= 10_000, "injection.at_task", "must be in [0, 10000] (0: not at a task switch)",
           inj.at_task)
    _check(0 <= inj.after_iterations <= 10_000_000, "injection.after_iterations",
           "must be in [0, 10000000] (update phases; 0: never)", inj.after_iterations)
    _check(inj.networks in ("actor", "critic", "both"), "injection.networks", "must be 'actor', 'critic' or 'both'",
           inj.networks)
    if "injection" in cfg.methods:
        _check(inj.at_task > 0 or inj.after_iterations > 0, "injection.at_task",
               "must be > 0 when injection.after_iterations is 0 (else it never fires)", inj.at_task)
    _check(len(cfg.trac.betas) >= 1 and all(0 < b < 1 for b in cfg.trac.betas), "trac.betas",
           "must be a non-empty list of numbers in (0, 1)", list(cfg.trac.betas))
    _check(cfg.trac.s_prev > 0, "trac.s_prev", "must be > 0", cfg.trac.s_prev)
    _check(cfg.trac.eps > 0, "trac.eps", "must be > 0", cfg.trac.eps)
    _check(cfg.trac.variant in ("torch", "jax"), "trac.variant", "must be 'torch' or 'jax'", cfg.trac.variant)
    net = methods.resolved_net(cfg)
    if cfg.diag.enabled and cfg.diag.ntk and cfg.diag.ntk_method == "structured" and (net.layer_norm or net.diag_layer):
        raise ConfigError("diag.ntk_method: the structured eNTK handles networks of Dense layers and LayerNorm or a "
                          "diagonal layer (net.layer_norm, net.diag_layer) adds others; set diag.ntk_method=generic "
                          "or auto (slower) or "
                          "diag.ntk=false, got 'structured'")
    from sphere_rl.methods.reset import PARTS as RESET_PARTS

    _check(len(cfg.reset.parts) >= 1 and all(part in RESET_PARTS for part in cfg.reset.parts), "reset.parts",
           f"must be a non-empty list of {', '.join(RESET_PARTS)}", list(cfg.reset.parts))
    _check(run.name == "" or (run.name not in (".", "..") and "/" not in run.name and os.sep not in run.name),
           "run.name", "must be a plain directory name (no '/', not '.' or '..')", run.name)
    _check(_path_ok(run.name), "run.name", f"must be a usable file name (at most {_NAME_MAX} bytes, no NUL)", run.name)
    _check(_path_ok(run.out_dir) and len(os.fsencode(run.out_dir)) <= _PATH_MAX, "run.out_dir",
           f"must be a usable path (at most {_PATH_MAX} bytes, {_NAME_MAX} per folder name, no NUL)", run.out_dir)

    _check(n.actor in nets.ACTORS, "net.actor", f"must be one of {sorted(nets.ACTORS)}", n.actor)
    _check(n.critic in nets.CRITICS, "net.critic", f"must be one of {sorted(nets.CRITICS)}", n.critic)
    for fname in ("hidden_sizes", "gate_hidden_sizes", "critic_hidden_sizes"):
        sizes = getattr(n, fname)
        _check(1 <= len(sizes) <= 64 and all(0 < s <= 65_536 for s in sizes), f"net.{fname}",
               "must be a list of 1 to 64 ints in [1, 65536]", sizes)
    _check(1 <= n.n_experts <= 4096, "net.n_experts", "must be in [1, 4096]", n.n_experts)
    _check(1 <= n.top_k, "net.top_k", "must be >= 1", n.top_k)
    _check(n.top_k <= n.n_experts, "net.top_k", f"must be <= net.n_experts ({n.n_experts})", n.top_k)
    _check(1 <= n.n_shared <= 4096, "net.n_shared", "must be in [1, 4096]", n.n_shared)
    _check(n.gate_temperature > 0, "net.gate_temperature", "must be > 0", n.gate_temperature)
    _check(n.activation in ("relu", "tanh", "crelu"), "net.activation", "must be 'relu', 'tanh' or 'crelu'", n.activation)
    _check(n.load_balance_coef >= 0, "net.load_balance_coef", "must be >= 0", n.load_balance_coef)
    _check(n.dispatch in nets.DISPATCH_MODES, "net.dispatch", f"must be one of {sorted(nets.DISPATCH_MODES)}", n.dispatch)
    _check(n.init in nets.INITS, "net.init", f"must be one of {sorted(nets.INITS)}", n.init)

    for fname in ("num_envs", "n_steps", "minibatch_size", "n_epochs"):
        _check(getattr(p, fname) >= 1, f"ppo.{fname}", "must be >= 1", getattr(p, fname))
    _check(p.minibatch_size <= cfg.batch_size, "ppo.minibatch_size",
           f"must be <= num_envs * n_steps ({cfg.batch_size})", p.minibatch_size)
    _check(cfg.batch_size % p.minibatch_size == 0, "ppo.minibatch_size",
           f"must divide num_envs * n_steps ({cfg.batch_size})", p.minibatch_size)
    for fname in ("gamma", "gae_lambda"):
        _check(0.0 <= getattr(p, fname) <= 1.0, f"ppo.{fname}", "must be in [0, 1]", getattr(p, fname))
    _check(p.clip_range > 0, "ppo.clip_range", "must be > 0", p.clip_range)
    for fname in ("ent_coef", "vf_coef"):
        _check(getattr(p, fname) >= 0, f"ppo.{fname}", "must be >= 0", getattr(p, fname))
    _check(p.max_grad_norm > 0, "ppo.max_grad_norm", "must be > 0", p.max_grad_norm)
    _check(p.lr > 0, "ppo.lr", "must be > 0", p.lr)
    _check(p.lr_final >= 0, "ppo.lr_final", "must be >= 0", p.lr_final)
    _check(0.0 < p.lr_end_fraction <= 1.0, "ppo.lr_end_fraction", "must be in (0, 1]", p.lr_end_fraction)
    _check(p.adam_eps > 0, "ppo.adam_eps", "must be > 0", p.adam_eps)
    _check(p.kl_mode in KL_MODES, "ppo.kl_mode", f"must be one of {', '.join(KL_MODES)}", p.kl_mode)
    _check(p.target_kl is None or p.target_kl > 0, "ppo.target_kl", "must be > 0 or none", p.target_kl)
    _check(p.target_kl is not None or p.kl_mode == "none", "ppo.target_kl",
           f"must be set for ppo.kl_mode={p.kl_mode} (or use ppo.kl_mode=none)", p.target_kl)
    _check(p.kl_lr_min > 0, "ppo.kl_lr_min", "must be > 0", p.kl_lr_min)
    _check(p.kl_lr_max >= p.kl_lr_min, "ppo.kl_lr_max", f"must be >= ppo.kl_lr_min ({p.kl_lr_min})", p.kl_lr_max)
    _check(p.kl_lr_factor > 1, "ppo.kl_lr_factor", "must be > 1", p.kl_lr_factor)
    _check(p.kl_lr_at_task_start in ("reset", "carry"), "ppo.kl_lr_at_task_start", "must be 'reset' or 'carry'",
           p.kl_lr_at_task_start)
    _check(p.obs_clip > 0, "ppo.obs_clip", "must be > 0", p.obs_clip)

    _check(r.name in regularizers.REGULARIZERS, "reg.name", f"must be one of {sorted(regularizers.REGULARIZERS)}", r.name)
    _check(r.mode in ("loss", "grad", "fixed"), "reg.mode", "must be 'loss', 'grad' or 'fixed'", r.mode)
    _check(r.coef is None or r.coef >= 0, "reg.coef", "must be >= 0 (or none: the mode's default)", r.coef)
    _check(r.placement in ("last", "all"), "reg.placement", "must be 'last' or 'all'", r.placement)
    _check(r.form in ("concat", "per_expert"), "reg.form", "must be 'concat' or 'per_expert'", r.form)
    _check(r.scale in ("raw", "trace"), "reg.scale", "must be 'raw' or 'trace'", r.scale)
    _check(r.factor in ("forward", "gradient"), "reg.factor", "must be 'forward' or 'gradient'", r.factor)
    _check(r.factor == "forward" or r.placement == "last", "reg.factor",
           "'gradient' is defined on the last hidden layer only (reg.placement=last)", r.factor)
    _check(r.routing_coef >= 0, "reg.routing_coef", "must be >= 0", r.routing_coef)

    _check(run.protocol in ("rl", "crl"), "run.protocol", "must be 'rl' or 'crl'", run.protocol)
    try:
        envs.resolve_sequence(run.tasks)
    except ValueError as err:
        raise ConfigError(f"run.tasks: {err}") from None
    _check(run.steps_per_task >= cfg.batch_size, "run.steps_per_task",
           f"must be >= one rollout (num_envs * n_steps = {cfg.batch_size})", run.steps_per_task)
    for fname in ("eval_every", "eval_episodes", "log_every", "checkpoint_every", "keep_checkpoints"):
        _check(getattr(run, fname) >= 1, f"run.{fname}", "must be >= 1", getattr(run, fname))
    _check(run.max_nonfinite_updates >= 0, "run.max_nonfinite_updates", "must be >= 0", run.max_nonfinite_updates)
    if run.reference_run:
        summary = os.path.join(run.reference_run, "summary.json")
        _check(os.path.isfile(summary), "run.reference_run", "must be a finished run directory (with summary.json)",
               run.reference_run)

    d = cfg.diag
    _check(d.every >= 0, "diag.every", "must be >= 0 (0: at every evaluation)", d.every)
    for fname in ("n_states", "probe_steps", "n_top", "memory_budget_mb"):
        _check(getattr(d, fname) >= 1, f"diag.{fname}", "must be >= 1", getattr(d, fname))
    _check(0 <= d.fit_steps <= 100_000, "diag.fit_steps", "must be in [0, 100000] (0: off)", d.fit_steps)
    _check(0 < d.fit_lr <= 1.0, "diag.fit_lr", "must be in (0, 1]", d.fit_lr)
    _check(0 <= d.rl_probe_steps <= 100_000_000, "diag.rl_probe_steps", "must be in [0, 100000000] (0: off)",
           d.rl_probe_steps)
    if d.enabled and d.rl_probe_steps:
        _check(bool(rl_probe_task(cfg)), "diag.rl_probe_task",
               f"must name an env id: {run.tasks!r} has no held-out task for `auto`", d.rl_probe_task)
    _check(d.n_states <= 65_536, "diag.n_states", "must be <= 65536 (the eNTK is N x N)", d.n_states)
    _check(d.ntk_method in ("auto", "structured", "generic"), "diag.ntk_method", "must be 'auto', 'structured' or 'generic'",
           d.ntk_method)
    _check(d.ntk_reduction in ("trace", "full"), "diag.ntk_reduction", "must be 'trace' or 'full'", d.ntk_reduction)
    _check(0.0 <= d.dormant_tau < 1.0, "diag.dormant_tau", "must be in [0, 1)", d.dormant_tau)


# ---------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, overrides: dict[str, Any], description: str) -> None:
    """Register a named preset: dotted overrides applied on top of the library defaults."""
    PRESETS[name] = {"overrides": dict(overrides), "description": description}


def preset(name: str, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Build a validated Config from a named preset plus optional dotted overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    cfg = Config().override(PRESETS[name]["overrides"])
    if overrides:
        cfg = cfg.override(overrides)
    return cfg.validate().resolved()


def load(path: str) -> Config:
    """Load a Config from a JSON file (e.g. a run directory's config.json; older layouts are migrated)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path!r} is a directory (give a config.json file)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path!r} cannot be read: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path!r} is not valid JSON: {err}") from None
    return Config.from_saved(data)


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict written before 0.3 (no `ppo.kl_mode`), rewritten to mean what that run did.

    Those runs stopped update phases early when `target_kl` was set (now `kl_mode=early_stop`),
    decayed the learning rate over the whole task (`lr_end_fraction=1`), used orthogonal init and
    called the routing penalty's weight `routing_weight` (added to the feature penalty under one
    lambda; it was 0 in every preset). Complete configs pass through unchanged.
    """
    if not isinstance(data, dict):  # not a config at all: from_dict says so
        return data
    ppo, net, reg = (data.get(k) for k in ("ppo", "net", "reg"))
    if not isinstance(ppo, dict) or "kl_mode" in ppo or not all(isinstance(data.get(k, {}), dict) for k in ("net", "reg")):
        return data  # complete, or not a config (from_dict names the bad section)
    data = json.loads(json.dumps(data))  # a deep copy
    ppo, net, reg = data["ppo"], data.setdefault("net", {}), data.setdefault("reg", {})
    ppo["kl_mode"] = "none" if ppo.get("target_kl") is None else "early_stop"
    ppo.setdefault("lr_end_fraction", 1.0)
    net.setdefault("init", "orthogonal")
    if "routing_weight" in reg:
        reg["routing_coef"] = reg.pop("routing_weight")
    return data


register_preset("default", {}, "Library defaults: official HumanoidBench PPO + Top-K MoE (E=10, k=2, 3x256) on arm6 CRL.")

_DEMO_NET = {
    "net.n_experts": 4, "net.top_k": 2, "net.hidden_sizes": [64, 64], "net.gate_hidden_sizes": [64],
    "net.critic_hidden_sizes": [64, 64],
}
_DEMO_PPO = {"ppo.num_envs": 64, "ppo.n_steps": 32, "ppo.minibatch_size": 512, "ppo.n_epochs": 4}
register_preset(
    "demo",
    {**_DEMO_NET, **_DEMO_PPO, "run.tasks": "arm6", "run.steps_per_task": 400_000, "run.eval_every": 50_000,
     "run.log_every": 20_000, "run.checkpoint_every": 100_000, "run.eval_episodes": 32},
    "Built-in demo: CRL on arm6 with a small Top-K MoE (E=4, k=2, 2x64), 400k steps per task (minutes on 2 CPU cores).",
)
register_preset(
    "demo-quick",
    {**_DEMO_NET, **_DEMO_PPO, "run.tasks": "arm2", "run.steps_per_task": 40_960, "run.eval_every": 20_480,
     "run.log_every": 10_240, "run.checkpoint_every": 20_480, "run.eval_episodes": 16},
    "Smoke-test budget of the demo (2 tasks, 40k steps each): checks the pipeline, learns little.",
)

# MetaWorld CW10 (docs/envs.md). The simulator is deterministic with the fixed task variation, and so is the
# evaluation policy (the action mean): every evaluation episode of a task is the same episode, so one is enough.
_CW10_EVAL = {"run.eval_episodes": 1, "diag.probe_steps": 32}
register_preset(
    "cw10-paper",
    {"run.tasks": "cw10", "run.steps_per_task": 1_000_000, "run.eval_every": 100_000, "run.eval_future_tasks": True,
     "run.log_every": 20_480, "run.checkpoint_every": 102_400, **_CW10_EVAL},
    "Continual World CW10: 1M steps per task, official PPO + Top-K MoE (E=10, k=2, 3x256, 128 envs x 16 steps, "
    "minibatch 64, 10 epochs); every task evaluated every 100k steps. Run seeds 0-4.",
)
register_preset(
    "cw10-quick",
    {"run.tasks": "cw10", "run.steps_per_task": 122_880, "run.eval_every": 20_480, "ppo.num_envs": 16,
     "ppo.n_steps": 128, "ppo.minibatch_size": 256, "ppo.n_epochs": 5, "run.log_every": 10_240,
     "run.checkpoint_every": 40_960, "diag.every": 122_880, **_CW10_EVAL},
    "CW10 on a small CPU: paper network, 16 envs x 128 steps, minibatch 256, 5 epochs, 122,880 steps per task "
    "(Top-K and + SPHERE side by side took 66-69 minutes on 2 cores; docs/benchmarks.md).",
)

# HumanoidBench H1 (docs/humanoidbench.md): the library defaults are the official settings.
register_preset(
    "h1-paper",
    {"run.tasks": "h1", "run.steps_per_task": 10_000_000, "run.eval_every": 100_000, "run.eval_episodes": 10},
    "HumanoidBench H1 CRL (stand, walk, pole, slide, run): 10M steps per task, official PPO + Top-K MoE "
    "(E=10, k=2, 3x256, 128 envs x 16 steps, minibatch 64, 10 epochs), 10 evaluation episodes every 100k. Run seeds 0-4.",
)
_PAPER_SPHERE = {"reg.name": "sphere", "reg.mode": "grad"}
"""SPHERE as the official HumanoidBench script runs it: gradient-norm scaling, ratio 0.001 (the grad mode's
default coefficient), last hidden expert layer, actor only, routing penalty off."""
register_preset(
    "h1-paper-sphere",
    {**PRESETS["h1-paper"]["overrides"], **_PAPER_SPHERE},
    "h1-paper + SPHERE as the official script runs it (reg.mode=grad, ratio 0.001: "
    "run_moe_ppo_topk_sphere_gradscale.sh). Run seeds 0-4.",
)
register_preset(
    "cw10-paper-sphere",
    {**PRESETS["cw10-paper"]["overrides"], **_PAPER_SPHERE},
    "cw10-paper + SPHERE with the official HumanoidBench script's settings (reg.mode=grad, ratio 0.001; the "
    "official code ships no CW10 script). Run seeds 0-4.",
)
_ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "all-layers": ({"reg.placement": "all"}, "on all hidden expert layers, summed (paper: 0.42 ± 0.07)"),
    "per-expert": ({"reg.form": "per_expert"}, "as a sum of per-expert losses, no cross-expert terms (paper: 0.40 ± 0.08)"),
    "critic": ({"reg.critic": True}, "also on the critic's features (the official `apply_to.critic`)"),
    "gradient-factor": ({"reg.factor": "gradient"}, "on the Gram of the backpropagated factor d f / d z of the last "
                        "hidden pre-activation instead of the features (our reading; paper: 0.43 ± 0.09)"),
}
"""The paper's SPHERE ablations on HumanoidBench CRL (SPEC §3; w/o SPHERE 0.36 ± 0.08, w/ 0.54 ± 0.12) that this
library runs: name -> (overrides on top of SPHERE as the official script runs it, what it changes)."""
for _name, (_overrides, _what) in _ABLATIONS.items():
    register_preset(
        f"h1-ablation-{_name}",
        {**PRESETS["h1-paper-sphere"]["overrides"], **_overrides},
        f"h1-paper-sphere with SPHERE {_what}. Run seeds 0-4.",
    )
    register_preset(
        f"demo-ablation-{_name}",
        {**PRESETS["demo"]["overrides"], "reg.name": "sphere", **_overrides},
        f"demo + SPHERE (loss mode) {_what}: the paper's ablation on the built-in suite.",
    )
register_preset(
    "h1-quick",
    {"run.tasks": "h1", "run.steps_per_task": 409_600, "run.eval_every": 102_400, "run.eval_episodes": 5,
     "ppo.num_envs": 16, "ppo.n_steps": 128, "ppo.minibatch_size": 256, "ppo.n_epochs": 5, "run.log_every": 20_480,
     "run.checkpoint_every": 102_400, "diag.every": 409_600},
    "HumanoidBench H1 on a small CPU: paper network, 16 envs x 128 steps, minibatch 256, 5 epochs, 409,600 steps "
    "per task (on 2 cores one run alone trains at about 634 env-steps/s, about 54 minutes; Top-K and + SPHERE side by side took 82 and 72; "
    "docs/benchmarks.md).",
)
