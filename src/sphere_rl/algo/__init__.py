"""PPO: losses, GAE, observation normaliser, the fused update phase and the training loops."""

from sphere_rl.algo.gae import compute_gae
from sphere_rl.algo.normalizer import RunningMeanStd
from sphere_rl.algo.ppo import PPO, AgentState, Batch

__all__ = ["PPO", "AgentState", "Batch", "RunningMeanStd", "compute_gae"]
