"""conv_impl: the sub-pixel transposed convolution equals flax's / lax's, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganjax.models import dcgan, layers

TOL = 1e-5  # Relative to the largest magnitude of the reference.


def _close(actual, expected, tol=TOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.abs(expected).max()), 1e-30)
  err = float(np.abs(actual - expected).max()) / scale
  assert err <= tol, f"relative error {err:.3g} > {tol}"


def _normal(seed, shape):
  # NumPy draws: eager jax.random would compile once per shape.
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def _check_same_layer(reference, subpixel, x, seed=0):
  """Same parameters; same outputs and vjp (input and parameter gradients), all jitted."""
  abstract = jax.eval_shape(reference.init, jax.random.key(0), x)
  assert _shapes(jax.eval_shape(subpixel.init, jax.random.key(0), x)) == _shapes(abstract)
  leaves, treedef = jax.tree.flatten(abstract)
  variables = treedef.unflatten([_normal(seed + i, v.shape) for i, v in enumerate(leaves)])
  y_shape = jax.eval_shape(reference.apply, variables, x).shape
  cotangent = _normal(seed + 99, y_shape)

  def forward_backward(module):
    def run(v, x, ct):
      y, vjp = jax.vjp(module.apply, v, x)
      return y, vjp(ct)

    return jax.jit(run)(variables, x, cotangent)

  (y_ref, (dv_ref, dx_ref)) = forward_backward(reference)
  (y_sub, (dv_sub, dx_sub)) = forward_backward(subpixel)
  _close(y_sub, y_ref)
  _close(dx_sub, dx_ref)
  for g_sub, g_ref in zip(jax.tree.leaves(dv_sub), jax.tree.leaves(dv_ref), strict=True):
    _close(g_sub, g_ref)
  return variables, y_sub


# (kernel, stride, padding, input spatial shape): the DCGAN layers first, then more of what
# lax.conv_transpose accepts (explicit pairs pad the stride-dilated input, may be negative).
CASES = [
    (5, 2, "SAME", (7, 7)),  # DCGAN 28: 7 -> 14
    (5, 2, "SAME", (14, 14)),  # DCGAN 28: 14 -> 28
    (5, 1, "SAME", (7, 7)),  # DCGAN 28: 7 -> 7
    (4, 2, "SAME", (4, 4)),  # DCGAN 32/64: doubling
    (4, 1, "VALID", (1, 1)),  # DCGAN 32/64: 1x1 -> 4x4
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


@pytest.mark.parametrize("kernel,stride,padding,spatial", CASES)
def test_subpixel_equals_conv_transpose(kernel, stride, padding, spatial):
  strides = stride if isinstance(stride, tuple) else (stride, stride)
  x = _normal(1, (2, *spatial, 3))
  for use_bias in (False, True):
    kw = dict(
        features=5, kernel_size=(kernel, kernel), strides=strides, padding=padding,
        use_bias=use_bias,
    )
    variables, y = _check_same_layer(nn.ConvTranspose(**kw), layers.ConvTranspose(**kw), x)
  # lax.conv_transpose itself, without flax.
  params = variables["params"]
  y_lax = jax.jit(
      lambda x, k: jax.lax.conv_transpose(
          x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
  )(x, params["kernel"])
  _close(y - params["bias"], y_lax)


@pytest.mark.parametrize(
    "kernel,strides,padding,shape",
    [
        ((4,), (2,), "SAME", (2, 5, 3)),  # 1-D
        ((3, 4, 2), (2, 2, 3), "SAME", (2, 3, 4, 2, 3)),  # 3-D
        ((5, 5), (2, 2), "SAME", (2, 3, 4, 4, 3)),  # two batch dimensions
    ],
)
def test_subpixel_other_ranks(kernel, strides, padding, shape):
  kw = dict(features=4, kernel_size=kernel, strides=strides, padding=padding)
  _check_same_layer(nn.ConvTranspose(**kw), layers.ConvTranspose(**kw), _normal(1, shape))


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (64, 64, 3)])
def test_dcgan_generator_same_outputs_for_every_impl(image_shape):
  z = _normal(0, (2, 8))
  xla = dcgan.Generator(image_shape=image_shape, width=4, conv_impl="xla")
  # The model's own initialisation. (With N(0, 1) weights the eval-mode activations reach ~1e4
  # and float32 rounding differences of the two, equally exact, formulations show up at ~1e-4.)
  variables = jax.jit(lambda k, z: xla.init(k, z, train=False))(jax.random.key(1), z)

  def outputs(model):
    def run(v, z):
      return model.apply(v, z, train=False), model.apply(v, z, train=True, mutable=["batch_stats"])

    return jax.jit(run)(variables, z)

  expected = outputs(xla)
  for impl in ("subpixel", "auto"):
    other = dcgan.Generator(image_shape=image_shape, width=4, conv_impl=impl)
    # Same parameter tree: checkpoints and conv_impl are independent.
    abstract = jax.eval_shape(lambda k, z: other.init(k, z, train=False), jax.random.key(1), z)
    assert _shapes(abstract) == _shapes(variables)
    for a, b in zip(jax.tree.leaves(outputs(other)), jax.tree.leaves(expected), strict=True):
      _close(a, b)


def test_auto_resolves_by_backend(monkeypatch):
  assert layers.resolve_conv_impl("auto") == "subpixel"  # The tests run on the CPU.
  assert layers.resolve_conv_impl("xla") == "xla"
  assert type(layers.conv_transpose(4, 5, 2, impl="auto")) is layers.ConvTranspose
  assert type(layers.conv_transpose(4, 5, 2, impl="xla")) is nn.ConvTranspose
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.resolve_conv_impl("auto") == "xla"
  assert type(layers.conv_transpose(4, 5, 2, impl="auto")) is nn.ConvTranspose
  with pytest.raises(ValueError, match=r"conv_impl 'cuda'.*valid choices: xla, subpixel, auto"):
    layers.resolve_conv_impl("cuda")
