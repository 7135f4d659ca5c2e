"""SRResNet / SRGAN networks (Ledig et al. 2017): shapes, parameter counts, pixel shuffle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganjax import models
from ganjax.models import srgan
from ganjax.state import parameter_count


def _params(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return variables["params"]


def _conv(k, cin, cout):  # kernel + bias
  return k * k * cin * cout + cout


def test_not_a_gan_architecture():
  assert srgan.SYSTEM == "srgan"
  assert "srgan" not in models.available_models()


def test_pixel_shuffle_inverts_space_to_depth_and_its_layout():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 10, 3)), jnp.float32)
  np.testing.assert_array_equal(srgan.pixel_shuffle(srgan.space_to_depth(x, 2), 2), x)
  y = jnp.asarray(rng.normal(size=(2, 3, 5, 2 * 16)), jnp.float32)
  np.testing.assert_array_equal(srgan.space_to_depth(srgan.pixel_shuffle(y, 4), 4), y)
  # Output pixel (h*r + i, w*r + j, c) comes from input channel (i*r + j)*C + c.
  out = np.asarray(srgan.pixel_shuffle(y, 4))
  h, w, i, j, c = 2, 3, 1, 3, 1
  assert out[1, h * 4 + i, w * 4 + j, c] == np.asarray(y)[1, h, w, (i * 4 + j) * 2 + c]


def test_pixel_shuffle_bad_shapes():
  with pytest.raises(ValueError, match="scale"):
    srgan.space_to_depth(jnp.zeros((1, 5, 4, 3)), 2)
  with pytest.raises(ValueError, match="channels"):
    srgan.pixel_shuffle(jnp.zeros((1, 4, 4, 6)), 2)


@pytest.mark.parametrize("scale", [2, 4])
def test_generator_shapes(scale):
  # Shapes only (jax.eval_shape: nothing is compiled); tests/srgan_test.py runs the networks.
  g = srgan.Generator(scale=scale, features=8, num_blocks=2)
  variables = jax.eval_shape(
    lambda: g.init(jax.random.key(0), jnp.zeros((1, 6, 9, 3)), train=False)
  )
  out, updates = jax.eval_shape(
    lambda v: g.apply(v, jnp.zeros((2, 5, 7, 3)), train=True, mutable=["batch_stats"]),
    variables,
  )
  assert out.shape == (2, 5 * scale, 7 * scale, 3)
  assert "batch_stats" in updates


def test_generator_rejects_other_scales():
  with pytest.raises(ValueError, match=r"scale 3.*valid choices: 2, 4"):
    srgan.Generator(scale=3).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), train=False)


def test_paper_generator_parameter_count():
  f, blocks, c = 64, 16, 3
  prelu = f  # one slope per channel
  bn = 2 * f  # scale and offset
  expected = (
    _conv(9, c, f)
    + prelu  # input layer
    + blocks * (2 * (_conv(3, f, f) + bn) + prelu)  # residual blocks
    + _conv(3, f, f)
    + bn  # after the blocks, before the long skip
    + 2 * (_conv(3, f, 4 * f) + prelu)  # two x2 sub-pixel stages for x4
    + _conv(9, f, c)  # output layer
  )
  assert expected == 1_550_659  # 15,616 + 64 + 16 * 74,176 + 37,056 + 2 * 147,776 + 15,555
  params = _params(srgan.Generator(scale=4), (1, 24, 24, 3))
  assert parameter_count(params) == expected


def test_paper_discriminator_parameter_count_and_logits():
  widths = [64, 64, 128, 128, 256, 256, 512, 512]
  convs = sum(_conv(3, cin, cout) for cin, cout in zip([3] + widths[:-1], widths, strict=True))
  bns = sum(2 * w for w in widths[1:])  # BatchNorm after all convs but the first
  flat = 6 * 6 * 512  # 96x96 input halved four times
  expected = convs + bns + (flat * 1024 + 1024) + (1024 + 1)
  params = _params(srgan.Discriminator(), (1, 96, 96, 3))
  assert parameter_count(params) == expected


def test_tiny_discriminator_logits():
  d = srgan.Discriminator(width=4, dense_features=8)
  x = jnp.zeros((3, 32, 48, 3))
  variables = jax.eval_shape(lambda: d.init(jax.random.key(0), x, train=False))
  logits, _ = jax.eval_shape(
    lambda v: d.apply(v, x, train=True, mutable=["batch_stats"]), variables
  )
  assert logits.shape == (3,)
