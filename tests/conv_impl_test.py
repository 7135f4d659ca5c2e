"""conv_impl: every convolution formulation equals flax's / lax's, values and gradients."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax import parallel
from ganjax.models import conv_kernels, dcgan, layers, mlp

TOL = 1e-5  # Relative to the largest magnitude of the reference.

# Variants of conv_impl="fast": module constants of ganjax.models.conv_kernels forcing each
# formulation its heuristics choose between, so that every code path is checked.
_HUGE = 1 << 30
FAST_VARIANTS = {
  "fast": {},
  "fast-subpixel": dict(_COL2IM_MAX_FEATURES=0, _SUBPIXEL_MAX_WASTE=float("inf")),
  "fast-phase": dict(_COL2IM_MAX_FEATURES=0, _SUBPIXEL_MAX_WASTE=0),
  "fast-col2im": dict(_COL2IM_MAX_FEATURES=_HUGE),
  "fast-wg-conv": dict(_WEIGHT_GRAD_CONV_MAX_PIXELS=_HUGE, _WEIGHT_GRAD_CONV_MIN_FEATURES=0),
  # Patches @ cotangent in batch chunks of one example (lax.scan).
  "fast-wg-gemm": dict(_WEIGHT_GRAD_CONV_MAX_PIXELS=-1, _PATCH_CHUNK_BYTES=1),
}


def _close(actual, expected, tol=TOL):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  scale = max(float(np.abs(expected).max()), 1e-30)
  err = float(np.abs(actual - expected).max()) / scale
  assert err <= tol, f"relative error {err:.3g} > {tol}"


def _normal(seed, shape):
  # NumPy draws: eager jax.random would compile once per shape.
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def _set_variant(monkeypatch, variant):
  for name, value in FAST_VARIANTS[variant].items():
    monkeypatch.setattr(conv_kernels, name, value)


def _forward_backward(module, variables, x, cotangent):
  """Output and vjp (parameter and input gradients), jitted."""

  def run(v, x, ct):
    y, vjp = jax.vjp(module.apply, v, x)
    return y, vjp(ct)

  return jax.jit(run)(variables, x, cotangent)


@functools.cache
def _reference(transpose, kw_items, x_shape, seed=0):
  """flax's layer: (variables, input, cotangent, output, gradients) for random parameters."""
  kw = dict(kw_items)
  reference = (nn.ConvTranspose if transpose else nn.Conv)(**kw)
  x = _normal(seed, x_shape)
  abstract = jax.eval_shape(reference.init, jax.random.key(0), x)
  leaves, treedef = jax.tree.flatten(abstract)
  variables = treedef.unflatten([_normal(seed + 1 + i, v.shape) for i, v in enumerate(leaves)])
  y_shape = jax.eval_shape(reference.apply, variables, x).shape
  cotangent = _normal(seed + 99, y_shape)
  return variables, x, cotangent, _forward_backward(reference, variables, x, cotangent)


def _check_layer(transpose, kw, x_shape, impl):
  """Same parameters as flax's layer; same outputs and vjp; returns (variables, output)."""
  variables, x, cotangent, expected = _reference(transpose, tuple(kw.items()), x_shape)
  cls = layers.ConvTranspose if transpose else layers.Conv
  module = cls(**kw, impl=impl)
  abstract = jax.eval_shape(module.init, jax.random.key(0), x)
  assert _shapes(abstract) == _shapes(variables)
  actual = _forward_backward(module, variables, x, cotangent)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    _close(a, b)
  return variables, actual[0]


# DCGAN layers (all layouts: 28, 32, 64) as (kernel, stride, padding, input size, in, out
# features); sizes shrunk where the structure (phases, padding, crops) does not depend on them.
DCGAN_TRANSPOSED = [
  (5, 1, "SAME", 7, 8, 6),  # 28: 7 -> 7
  (5, 2, "SAME", 7, 6, 5),  # 28: 7 -> 14
  (5, 2, "SAME", 14, 5, 1),  # 28: 14 -> 28, one channel
  (4, 1, "VALID", 1, 8, 6),  # 32/64: 1x1 -> 4x4
  (4, 2, "SAME", 4, 6, 5),  # 32/64: doubling
  (4, 2, "SAME", 16, 5, 3),  # 32/64: to RGB
]
DCGAN_CONVS = [
  (5, 2, "SAME", 28, 1, 6),  # 28: 28 -> 14
  (5, 2, "SAME", 14, 6, 20),  # 28: 14 -> 7
  (4, 2, "SAME", 32, 3, 5),  # 32/64: RGB input
  (4, 2, "SAME", 8, 20, 6),  # 32/64: halving
  (4, 1, "VALID", 4, 6, 1),  # 32/64: 4x4 -> 1 logit
]


@pytest.mark.parametrize("variant", list(FAST_VARIANTS) + ["subpixel"])
@pytest.mark.parametrize("case", DCGAN_TRANSPOSED, ids=str)
def test_dcgan_transposed_convs(case, variant, monkeypatch):
  kernel, stride, padding, size, c_in, c_out = case
  _set_variant(monkeypatch, variant if variant != "subpixel" else "fast")
  kw = dict(
    features=c_out,
    kernel_size=(kernel, kernel),
    strides=(stride, stride),
    padding=padding,
    use_bias=True,
  )
  _check_layer(True, kw, (3, size, size, c_in), variant.split("-")[0])


@pytest.mark.parametrize("variant", FAST_VARIANTS)
@pytest.mark.parametrize("case", DCGAN_CONVS, ids=str)
def test_dcgan_convs(case, variant, monkeypatch):
  kernel, stride, padding, size, c_in, c_out = case
  _set_variant(monkeypatch, variant)
  kw = dict(
    features=c_out,
    kernel_size=(kernel, kernel),
    strides=(stride, stride),
    padding=padding,
    use_bias=True,
  )
  _check_layer(False, kw, (3, size, size, c_in), "fast")


# More of what lax.conv_transpose accepts: explicit pairs pad the stride-dilated input (and may be
# negative), strides above or below the kernel size, unequal strides.
TRANSPOSED_CASES = [
  (3, 2, "SAME", (5, 6)),
  (4, 2, ((1, 2), (1, 2)), (6, 5)),
  (4, 2, "VALID", (3, 4)),
  (5, 2, ((0, 0), (2, 1)), (6, 6)),
  (4, 2, ((-1, 1), (3, 0)), (5, 6)),
  (3, 3, "SAME", (4, 3)),
  (2, 2, "SAME", (5, 5)),
  (1, 2, "VALID", (3, 3)),
  (3, (2, 1), "SAME", (4, 5)),
]


@pytest.mark.parametrize("impl", ["subpixel", "fast"])
@pytest.mark.parametrize("kernel,stride,padding,spatial", TRANSPOSED_CASES, ids=str)
def test_transposed_conv_general(kernel, stride, padding, spatial, impl):
  strides = stride if isinstance(stride, tuple) else (stride, stride)
  kw = dict(features=5, kernel_size=(kernel, kernel), strides=strides, padding=padding)
  variables, y = _check_layer(True, kw, (2, *spatial, 3), impl)
  # lax.conv_transpose itself, without flax.
  params = variables["params"]
  x = _reference(True, tuple(kw.items()), (2, *spatial, 3))[1]
  y_lax = jax.jit(
    lambda x, k: jax.lax.conv_transpose(
      x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  )(x, params["kernel"])
  _close(y - params["bias"], y_lax)


@pytest.mark.parametrize(
  "kernel,stride,padding,spatial",
  [
    (3, 2, "SAME", (7, 6)),
    (4, 2, ((1, 2), (0, 1)), (9, 8)),
    (4, 2, "VALID", (9, 10)),
    (3, 3, "SAME", (10, 7)),
    (3, (2, 1), "SAME", (6, 5)),
    (1, 2, "VALID", (5, 5)),
    (5, 1, "SAME", (6, 6)),  # stride 1: flax's path
  ],
  ids=str,
)
def test_conv_general(kernel, stride, padding, spatial):
  strides = stride if isinstance(stride, tuple) else (stride, stride)
  kw = dict(features=4, kernel_size=(kernel, kernel), strides=strides, padding=padding)
  _check_layer(False, kw, (2, *spatial, 3), "fast")


@pytest.mark.parametrize(
  "kernel,strides,padding,shape",
  [
    ((4,), (2,), "SAME", (2, 5, 3)),  # 1-D
    ((3, 4, 2), (2, 2, 3), "SAME", (2, 3, 4, 2, 3)),  # 3-D
    ((5, 5), (2, 2), "SAME", (2, 3, 4, 4, 3)),  # two batch dimensions
  ],
)
@pytest.mark.parametrize("impl", ["subpixel", "fast"])
def test_other_ranks_and_batch_shapes(kernel, strides, padding, shape, impl):
  kw = dict(features=4, kernel_size=kernel, strides=strides, padding=padding)
  _check_layer(True, kw, shape, impl)
  _check_layer(False, kw, shape, impl)


def test_second_order_gradients():
  """The custom VJPs are differentiable: a gradient penalty's gradient equals flax's."""
  x = _normal(0, (2, 8, 8, 3))
  kw = dict(features=4, kernel_size=(4, 4), strides=(2, 2), padding="SAME")

  def penalty(conv_cls, conv_t_cls, **impl):
    net = nn.Sequential([conv_cls(**kw, **impl), conv_t_cls(**kw, **impl)])

    def loss(v, x):
      dx = jax.grad(lambda x: jnp.sum(jnp.sin(net.apply(v, x))))(x)
      return jnp.sum(dx**2)

    return net, loss

  net, loss = penalty(nn.Conv, nn.ConvTranspose)
  variables = net.init(jax.random.key(0), x)
  expected = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
  _, fast_loss = penalty(layers.Conv, layers.ConvTranspose, impl="fast")
  actual = jax.jit(jax.grad(fast_loss, argnums=(0, 1)))(variables, x)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    _close(a, b, 1e-4)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("variant", ["fast", "fast-wg-gemm"])
def test_sharded_batch_and_shard_map(variant, monkeypatch):
  """Gradients with the batch sharded over 8 devices (global jit and shard_map) equal 1 device."""
  _set_variant(monkeypatch, variant)
  kw = dict(features=4, kernel_size=(4, 4), strides=(2, 2), padding="SAME")
  net = nn.Sequential([layers.Conv(**kw, impl="fast"), layers.ConvTranspose(**kw, impl="fast")])
  x = _normal(0, (16, 8, 8, 3))
  variables = net.init(jax.random.key(0), x)

  def grads(v, x):
    return jax.grad(lambda v, x: jnp.sum(jnp.sin(net.apply(v, x))), argnums=(0, 1))(v, x)

  expected = jax.jit(grads)(variables, x)
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
  global_view = jax.jit(grads)(variables, sharded)

  def shard_map(check_vma):
    def per_device(v, x):
      dv, dx = grads(v, x)
      # With vma checking on, the kernel gradients are already summed over devices (as lax's).
      return (dv if check_vma else jax.lax.psum(dv, "data")), dx

    specs = dict(in_specs=(P(), P("data")), out_specs=(P(), P("data")), check_vma=check_vma)
    return jax.jit(jax.shard_map(per_device, mesh=mesh, **specs))(variables, sharded)

  for actual in (global_view, shard_map(False), shard_map(True)):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
      _close(a, b)


# --- Whole models ---------------------------------------------------------------------------


@functools.cache
def _dcgan(image_shape, impl, dtype="float32"):
  """(G, D, G variables, D variables, G inputs, D inputs) of a tiny DCGAN."""
  g = dcgan.Generator(image_shape=image_shape, width=4, conv_impl=impl, dtype=dtype)
  d = dcgan.Discriminator(width=4, conv_impl=impl, dtype=dtype)
  z = _normal(0, (2, 8))
  x = jnp.tanh(_normal(1, (2, *image_shape)))
  reference = dcgan.Generator(image_shape=image_shape, width=4, conv_impl="xla")
  # The model's own initialisation. (With N(0, 1) weights the eval-mode activations reach ~1e4
  # and float32 rounding differences of the equally exact formulations show up at ~1e-4.)
  g_vars = jax.jit(lambda k, z: reference.init(k, z, train=False))(jax.random.key(1), z)
  d_ref = dcgan.Discriminator(width=4, conv_impl="xla")
  d_vars = jax.jit(lambda k, x: d_ref.init(k, x, train=False))(jax.random.key(2), x)
  return g, d, g_vars, d_vars, z, x


@functools.cache
def _dcgan_outputs(image_shape, impl, dtype="float32"):
  """G and D outputs (eval and train mode) and the gradients a training step takes."""
  g, d, g_vars, d_vars, z, x = _dcgan(image_shape, impl, dtype)
  rngs = {"dropout": jax.random.key(3)}

  def run(g_vars, d_vars, z, x):
    out = {"g_eval": g.apply(g_vars, z, train=False)}
    fake, stats = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
    out["g_train"], out["g_stats"] = fake, stats
    out["d_eval"] = d.apply(d_vars, x, train=False)

    def d_loss(d_params, x):
      logits, _ = d.apply(
        {**d_vars, "params": d_params}, x, train=True, rngs=rngs, mutable=["batch_stats"]
      )
      return jnp.mean(jax.nn.softplus(-logits))

    out["d_grads"] = jax.grad(d_loss, argnums=(0, 1))(d_vars["params"], x)

    def g_loss(g_params):
      fake, _ = g.apply({**g_vars, "params": g_params}, z, train=True, mutable=["batch_stats"])
      return d_loss(d_vars["params"], fake)

    out["g_grads"] = jax.grad(g_loss)(g_vars["params"])
    return out

  return jax.jit(run)(g_vars, d_vars, z, x)


# 28x28 in the default suite: its layers and the 32/64-pixel ones are each checked on their own
# (test_dcgan_convs, test_dcgan_transposed_convs); the whole larger networks are slow checks.
IMAGE_SHAPES = [
  (28, 28, 1),
  pytest.param((32, 32, 3), marks=pytest.mark.slow),
  pytest.param((64, 64, 3), marks=pytest.mark.slow),
]


# "auto" is "fast" on the CPU (test_auto_resolves_by_backend).
@pytest.mark.parametrize("impl", ["subpixel", "fast"])
@pytest.mark.parametrize("image_shape", IMAGE_SHAPES, ids=str)
def test_dcgan_same_outputs_and_gradients_for_every_impl(image_shape, impl):
  g, d, g_vars, d_vars, z, x = _dcgan(image_shape, impl)
  # Same parameter trees: checkpoints and conv_impl are independent.
  assert _shapes(jax.eval_shape(lambda z: g.init(jax.random.key(1), z, train=False), z)) == (
    _shapes(g_vars)
  )
  assert _shapes(jax.eval_shape(lambda x: d.init(jax.random.key(2), x, train=False), x)) == (
    _shapes(d_vars)
  )
  expected = _dcgan_outputs(image_shape, "xla")
  actual = _dcgan_outputs(image_shape, impl)
  for key in expected:
    for a, b in zip(jax.tree.leaves(actual[key]), jax.tree.leaves(expected[key]), strict=True):
      _close(a, b, 5e-5 if key.endswith("grads") else TOL)


@pytest.mark.parametrize(
  "image_shape", [(28, 28, 1), pytest.param((64, 64, 3), marks=pytest.mark.slow)], ids=str
)
def test_dcgan_bfloat16(image_shape):
  out = _dcgan_outputs(image_shape, "auto", "bfloat16")
  expected = _dcgan_outputs(image_shape, "xla")
  for key in ("g_eval", "g_train", "d_eval"):
    assert out[key].dtype == jnp.float32  # Outputs come back as float32.
    assert np.all(np.isfinite(out[key]))
    _close(out[key], expected[key], 0.05)
  for key in ("d_grads", "g_grads"):
    leaves = jax.tree.leaves(out[key])
    assert all(a.dtype == jnp.float32 and np.all(np.isfinite(a)) for a in leaves)
    # Gradients through BatchNorm over 2 examples amplify bfloat16 rounding (XLA's own
    # convolutions give the same errors): compare directions.
    actual = np.concatenate([np.ravel(a) for a in leaves])
    wanted = np.concatenate([np.ravel(a) for a in jax.tree.leaves(expected[key])])
    assert actual @ wanted / np.linalg.norm(actual) / np.linalg.norm(wanted) > 0.9


def test_mlp_bfloat16():
  z = _normal(0, (4, 8))
  g32 = mlp.Generator(image_shape=(28, 28, 1), hidden=(32, 32))
  g16 = mlp.Generator(image_shape=(28, 28, 1), hidden=(32, 32), dtype="bfloat16")
  d32, d16 = mlp.Discriminator(hidden=(32,)), mlp.Discriminator(hidden=(32,), dtype="bfloat16")

  @jax.jit
  def run(z):
    g_vars = g32.init(jax.random.key(0), z, train=False)
    images = [g.apply(g_vars, z, train=False) for g in (g32, g16)]
    d_vars = d32.init(jax.random.key(1), images[0], train=False)
    logits = [d.apply(d_vars, images[0], train=False) for d in (d32, d16)]
    return g_vars, images, logits

  g_vars, (x32, x16), (l32, l16) = run(z)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g_vars))
  assert x16.dtype == l16.dtype == jnp.float32
  _close(x16, x32, 0.05)
  _close(l16, l32, 0.05)


def test_unknown_dtype_lists_the_valid_ones():
  z = jax.ShapeDtypeStruct((1, 8), jnp.float32)
  for generator in (
    dcgan.Generator(image_shape=(28, 28, 1), width=4, dtype="float16"),
    mlp.Generator(image_shape=(2,), dtype="float16"),
  ):
    with pytest.raises(ValueError, match=r"dtype 'float16'.*valid choices: float32, bfloat16"):
      jax.eval_shape(lambda z, g=generator: g.init(jax.random.key(0), z, train=False), z)


def test_auto_resolves_by_backend(monkeypatch):
  assert layers.resolve_conv_impl("auto") == "fast"  # The tests run on the CPU.
  assert layers.resolve_conv_impl("xla") == "xla"
  assert type(layers.conv_transpose(4, 5, 2, impl="auto")) is layers.ConvTranspose
  assert type(layers.conv(4, 5, 2, impl="auto")) is layers.Conv
  assert type(layers.conv_transpose(4, 5, 2, impl="xla")) is nn.ConvTranspose
  assert type(layers.conv(4, 5, 2, impl="xla")) is nn.Conv
  assert layers.conv_transpose(4, 5, 2, impl="subpixel").impl == "subpixel"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.resolve_conv_impl("auto") == "xla"
  assert type(layers.conv_transpose(4, 5, 2, impl="auto")) is nn.ConvTranspose
  with pytest.raises(ValueError, match=r"conv_impl 'cuda'.*valid choices: xla, subpixel, fast"):
    layers.resolve_conv_impl("cuda")
