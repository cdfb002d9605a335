"""sphere-rl: plasticity loss in continual RL with JAX PPO, Mixture-of-Experts actors and SPHERE."""

__version__ = "0.1.0"
