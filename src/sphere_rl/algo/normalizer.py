"""Running mean/variance observation normaliser (a pytree, part of the agent state)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


class RunningMeanStd(flax.struct.PyTreeNode):
    """Per-feature running statistics, merged batch by batch (Chan et al. parallel update, as SB3)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, dim: int) -> "RunningMeanStd":
        # count starts at a tiny epsilon, as in SB3's VecNormalize, so the first merge is well defined.
        return cls(mean=jnp.zeros(dim, jnp.float32), var=jnp.ones(dim, jnp.float32), count=jnp.asarray(1e-4, jnp.float32))

    def update(self, batch: jax.Array) -> "RunningMeanStd":
        """Merge a (B, dim) batch of raw observations."""
        batch = batch.reshape(-1, self.mean.shape[0]).astype(jnp.float32)
        b_mean = batch.mean(axis=0)
        b_var = batch.var(axis=0)
        b_count = jnp.asarray(batch.shape[0], jnp.float32)
        delta = b_mean - self.mean
        total = self.count + b_count
        new_mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + jnp.square(delta) * self.count * b_count / total
        return self.replace(mean=new_mean, var=m2 / total, count=total)

    def normalize(self, obs: jax.Array, clip: float) -> jax.Array:
        return jnp.clip((obs - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)
