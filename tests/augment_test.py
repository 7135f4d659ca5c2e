"""DiffAugment: exact single ops, per-example randomness, differentiability, jit, policy names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_bitwise_equal, assert_float32_close

from ganjax import augment

B, H, W, C = 8, 16, 16, 3


def _images(seed=0, shape=(B, H, W, C)):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, shape), jnp.float32)


OPS = {
  "brightness": augment.brightness,
  "saturation": augment.saturation,
  "contrast": augment.contrast,
  "translation": augment.translation,
  "cutout": augment.cutout,
  "diff_augment": augment.diff_augment,
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_shape_dtype_and_per_example_randomness(name):
  x = jnp.broadcast_to(_images(1, (1, H, W, C)), (B, H, W, C))  # The same image B times.
  y = OPS[name](x, jax.random.key(0))
  assert y.shape == x.shape and y.dtype == x.dtype
  assert np.all(np.isfinite(y))
  # Identical inputs, different outputs: the parameters are drawn per example.
  flat = np.asarray(y).reshape(B, -1)
  assert len({row.tobytes() for row in flat}) > 1
  # A different key gives a different result; the same key the same one (the same program on the
  # same inputs: bit for bit).
  assert not np.array_equal(y, OPS[name](x, jax.random.key(1)))
  assert_bitwise_equal(y, OPS[name](x, jax.random.key(0)))


def test_translate_by_moves_one_hot_exactly():
  x = np.zeros((4, H, W, C), np.float32)
  x[:, 5, 7, 1] = 1.0
  shift_y = jnp.array([0, 2, -3, 1])
  shift_x = jnp.array([0, -1, 4, 12])  # The last one moves the pixel out of the image.
  y = np.asarray(augment.translate_by(jnp.asarray(x), shift_y, shift_x))
  for i, (dy, dx) in enumerate([(0, 0), (2, -1), (-3, 4)]):
    expected = np.zeros((H, W, C), np.float32)
    expected[5 + dy, 7 + dx, 1] = 1.0
    np.testing.assert_array_equal(y[i], expected)
  assert np.all(y[3] == 0)


def test_translate_by_pads_with_zeros():
  x = jnp.ones((2, H, W, C))
  y = np.asarray(augment.translate_by(x, jnp.array([2, -1]), jnp.array([-3, 0])))
  # Image 0: content moves down 2 and left 3, so the top 2 rows and right 3 columns are empty.
  assert np.all(y[0, :2] == 0) and np.all(y[0, :, W - 3 :] == 0)
  assert np.all(y[0, 2:, : W - 3] == 1)
  assert np.all(y[1, H - 1] == 0) and np.all(y[1, : H - 1] == 1)


def test_random_translation_is_an_integer_shift_within_range():
  x = np.zeros((64, H, W, 1), np.float32)
  x[:, H // 2, W // 2, 0] = 1.0
  y = np.asarray(augment.translation(jnp.asarray(x), jax.random.key(3)))
  max_shift = round(H / 8)
  shifts = []
  for image in y[..., 0]:
    assert image.sum() == 1.0  # Moved, never split or blurred (the centre stays inside).
    (i,), (j,) = np.nonzero(image)
    shifts.append((i - H // 2, j - W // 2))
  shifts = np.array(shifts)
  assert np.abs(shifts).max() == max_shift
  assert len({tuple(s) for s in shifts}) > 10


def test_cutout_at_inside_zeroes_exactly_a_quarter():
  x = jnp.ones((3, H, W, C))
  size = (H // 2, W // 2)
  y = np.asarray(augment.cutout_at(x, jnp.array([0, 3, 8]), jnp.array([8, 5, 0]), size))
  for i, (top, left) in enumerate([(0, 8), (3, 5), (8, 0)]):
    zero = np.all(y[i] == 0, axis=-1)
    assert zero.sum() == (H // 2) * (W // 2)
    assert np.all(zero[top : top + H // 2, left : left + W // 2])
    assert np.all(y[i][~zero] == 1)


def test_cutout_at_boundary_is_clipped():
  x = jnp.ones((2, H, W, 1))
  y = np.asarray(augment.cutout_at(x, jnp.array([-4, 12]), jnp.array([-4, 14]), (8, 8)))
  assert (y[0] == 0).sum() == 4 * 4  # Rows 0..3, columns 0..3.
  assert np.all(y[0, :4, :4] == 0)
  assert (y[1] == 0).sum() == 4 * 2  # Rows 12..15, columns 14..15.


def test_random_cutout_counts_and_positions():
  x = jnp.ones((256, H, W, 1))
  y = np.asarray(augment.cutout(x, jax.random.key(4)))
  counts = (y == 0).reshape(256, -1).sum(axis=1)
  quarter = (H // 2) * (W // 2)
  # A square of half the size, clipped to at least a quarter of itself at a corner.
  assert counts.max() == quarter and counts.min() >= quarter // 4
  assert np.mean(counts == quarter) > 0.2  # Fully inside for a good share of positions.
  assert np.all((y == 0) | (y == 1))


def test_brightness_adds_one_constant_per_image():
  x = _images(5)
  y = np.asarray(augment.brightness(x, jax.random.key(6)))
  delta = y - np.asarray(x)
  per_image = delta.reshape(B, -1)
  # Each delta is x + b rounded, minus x rounded: two roundings at the size of y.
  assert_float32_close(
    per_image,
    np.broadcast_to(per_image[:, :1], per_image.shape),
    length=2,
    magnitude=float(np.abs(y).max()),
  )
  assert np.all(np.abs(per_image[:, 0]) <= 0.5)
  # Distinct per image: the 8 draws are >= 0.01 apart, far beyond the rounding to 5 decimals.
  assert len(np.unique(np.round(per_image[:, 0], 5))) == B


def _assert_one_factor_per_image(x, y, axis, length):
  """``y - mean(y) = s * (x - mean(x))`` with one ``s`` per image (means over ``axis``); returns s.

  ``s`` is read off where the image deviates most from its mean (well conditioned); every other
  deviation must be ``s`` times its own up to the round-off of the op's and this test's means
  (``length`` terms in all), which also moves all deviations of an image by one constant.
  """
  dev_x = (x - x.mean(axis=axis, keepdims=True)).reshape(B, -1)
  dev_y = (y - y.mean(axis=axis, keepdims=True)).reshape(B, -1)
  largest = np.argmax(np.abs(dev_x), axis=1)
  factors = dev_y[np.arange(B), largest] / dev_x[np.arange(B), largest]
  magnitude = float(np.max(np.abs(np.concatenate([x, y]))))
  assert_float32_close(dev_y, factors[:, None] * dev_x, length=length, magnitude=magnitude)
  return factors


def test_saturation_keeps_channel_mean_and_contrast_keeps_image_mean():
  x = np.asarray(_images(7))
  # Means over C channels (saturation) or H * W * C pixels (contrast), once in the op and once
  # here: 2 * that many accumulated terms at the size of the images.
  sat = np.asarray(augment.saturation(jnp.asarray(x), jax.random.key(8)))
  magnitude = float(np.max(np.abs(np.concatenate([x, sat]))))
  assert_float32_close(sat.mean(axis=-1), x.mean(axis=-1), length=2 * C, magnitude=magnitude)
  # The deviation from the channel mean is scaled by one factor in [0, 2) per image.
  factors = _assert_one_factor_per_image(x, sat, -1, 2 * C)
  assert np.all((factors >= 0) & (factors < 2))

  con = np.asarray(augment.contrast(jnp.asarray(x), jax.random.key(9)))
  magnitude = float(np.max(np.abs(np.concatenate([x, con]))))
  assert_float32_close(
    con.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), length=2 * H * W * C, magnitude=magnitude
  )
  factors = _assert_one_factor_per_image(x, con, (1, 2, 3), 2 * H * W * C)
  assert np.all((factors >= 0.5) & (factors < 1.5))


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_gradients_finite_and_nonzero(policy):
  x = _images(10)
  weights = _images(11)

  def loss(images):
    return jnp.sum(augment.diff_augment(images, jax.random.key(12), policy) * weights)

  grads = np.asarray(jax.jit(jax.grad(loss))(x))
  assert np.all(np.isfinite(grads))
  # Every example receives gradient (nothing is zeroed entirely).
  assert np.all(np.abs(grads).reshape(B, -1).sum(axis=1) > 0)


def test_translation_gradient_is_the_shifted_cotangent():
  """The gradient of <T(x), v> w.r.t. x is v shifted back, zero where content left the image."""
  x = _images(13, (1, H, W, C))
  v = _images(14, (1, H, W, C))
  sy, sx = jnp.array([3]), jnp.array([-2])
  grad = jax.grad(lambda a: jnp.sum(augment.translate_by(a, sy, sx) * v))(x)
  expected = augment.translate_by(v, -sy, -sx)
  # Exact: a gather's gradient scatters each cotangent entry to one place (adding zeros).
  np.testing.assert_array_equal(grad, expected)


def test_jit_matches_eager_and_policy_is_static():
  x = _images(15)
  rng = jax.random.key(16)
  jitted = jax.jit(augment.diff_augment, static_argnames="policy")
  eager = augment.diff_augment(x, rng, policy="color,cutout")
  # Another compilation: the colour ops' means over C channels and H * W * C pixels may round
  # differently. Another key or policy would move the cutout square: differences of order 1.
  assert_float32_close(
    jitted(x, rng, policy="color,cutout"),
    eager,
    length=H * W * C + C,
    magnitude=float(np.abs(eager).max()),
  )
  np.testing.assert_array_equal(augment.diff_augment(x, rng, policy=""), x)  # A copy: exact.


def test_unknown_policy_raises_with_valid_names():
  with pytest.raises(ValueError, match="'zoom'.*valid choices: color, cutout, translation"):
    augment.diff_augment(_images(), jax.random.key(0), policy="color,zoom")
  with pytest.raises(ValueError, match="NHWC"):
    augment.diff_augment(jnp.zeros((4, 8)), jax.random.key(0))
