r"""A minimal hand-written jit GAN step of the same networks, to measure ganjax's overhead.

  python benchmarks/handwritten_step.py --workload dcgan28 --steps 20 --warmup 3 [--json]

Same flax modules (``ganjax.models``), data, losses, optimizer and flags as train_step.py, but plain
``optax`` + ``jax.jit`` + ``jax.value_and_grad`` (no ganjax.steps / parallel / state): what one
would write by hand. It skips what ganjax adds: the generator EMA, gradient norms and probability
metrics, the mesh and the sharding annotations.
"""

from __future__ import annotations

import harness
import jax
import jax.numpy as jnp
import optax
import train_step
from workloads import WORKLOADS


def _bce(logits, target: float):
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def make(workload: str, dtype: str = "float32", conv_impl: str | None = None):
  """Returns ``(init(key) -> state, step(state, images, key) -> (state, losses))``."""
  w = WORKLOADS[workload]
  generator, discriminator = train_step.build_models(workload, dtype, conv_impl)
  tx = optax.adam(2e-4, b1=0.5)

  def apply(module, params, stats, x, key):
    """Train-mode forward; returns the output and the updated BatchNorm statistics."""
    variables = {"params": params, "batch_stats": stats} if stats else {"params": params}
    rngs = {"dropout": key} if key is not None else None
    out, updates = module.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    return out, updates.get("batch_stats", {})

  def init(key):
    g_key, d_key = jax.random.split(key)
    g_vars = generator.init(g_key, jnp.zeros((2, w.latent)), train=False)
    d_vars = discriminator.init(d_key, jnp.zeros((2, *w.image_shape)), train=False)
    g_params, d_params = g_vars["params"], d_vars["params"]
    return {
      "step": jnp.zeros((), jnp.int32),
      "g": (g_params, g_vars.get("batch_stats", {}), tx.init(g_params)),
      "d": (d_params, d_vars.get("batch_stats", {}), tx.init(d_params)),
    }

  def step(state, real, key):
    key = jax.random.fold_in(key, state["step"])
    z_d_key, drop_d_key, z_g_key, drop_g_key = jax.random.split(key, 4)
    g_params, g_stats, g_opt = state["g"]
    d_params, d_stats, d_opt = state["d"]

    # Discriminator update on a real and a fake batch; G's new statistics are dropped.
    z = jax.random.normal(z_d_key, (w.batch, w.latent))
    fake = jax.lax.stop_gradient(apply(generator, g_params, g_stats, z, None)[0])

    def d_loss_fn(params):
      real_key, fake_key = jax.random.split(drop_d_key)
      real_logits, stats = apply(discriminator, params, d_stats, real, real_key)
      fake_logits, stats = apply(discriminator, params, stats, fake, fake_key)
      return 0.5 * (_bce(real_logits, 1.0) + _bce(fake_logits, 0.0)), stats

    (d_loss, d_stats), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
    updates, d_opt = tx.update(grads, d_opt, d_params)
    d_params = optax.apply_updates(d_params, updates)

    # Generator update through the new D (non-saturating loss); D's new statistics are dropped.
    z = jax.random.normal(z_g_key, (w.batch, w.latent))

    def g_loss_fn(params):
      fake, stats = apply(generator, params, g_stats, z, None)
      logits, _ = apply(discriminator, d_params, d_stats, fake, drop_g_key)
      return _bce(logits, 1.0), stats

    (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
    updates, g_opt = tx.update(grads, g_opt, g_params)
    g_params = optax.apply_updates(g_params, updates)
    new_state = {
      "step": state["step"] + 1,
      "g": (g_params, g_stats, g_opt),
      "d": (d_params, d_stats, d_opt),
    }
    return new_state, {"d_loss": d_loss, "g_loss": g_loss}

  return init, step


def run(workload: str, num_steps: int, warmup: int, dtype="float32", conv_impl=None) -> dict:
  """Compiles and times the hand-written step; returns the result record."""
  init, step = make(workload, dtype, conv_impl)
  state = jax.jit(init)(jax.random.key(0))
  images = jnp.asarray(train_step.random_images(workload))
  rng = jax.random.key(1)
  return train_step.time_jax_step(
    jax.jit(step, donate_argnums=0),
    state,
    (images, rng),
    workload,
    num_steps,
    warmup,
    framework="handwritten",
    dtype=dtype,
    conv_impl=train_step.conv_impl_used(workload, conv_impl),
  )


def main():
  p = harness.parser(__doc__.split("\n")[0])
  train_step.add_jax_arguments(p)
  args = p.parse_args()
  harness.report(run(args.workload, args.steps, args.warmup, args.dtype, args.conv_impl), args.json)


if __name__ == "__main__":
  main()
