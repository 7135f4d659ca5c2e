"""Class-conditional GANs: conditional networks, the ACGAN loss, labels in the steps, configs."""

import json
import os

import jax
import jax.numpy as jnp
import load_contract
import numpy as np
import pytest
import tolerances
from conftest import load_config
from PIL import Image

import ganjax
from ganjax import errors, losses, parallel, sampling, state, steps
from ganjax.data import gaussian_mixture
from ganjax.models import blocks, dcgan, mlp
from ganjax.systems import gan

K = 10
LATENT = 8

# (module, image shape, small hyperparameters). The DCGANs use XLA's own convolutions: the subject
# here is the conditioning, and conv_impl_test shows the fast kernels give the same results.
_NETS = [
  (mlp, (28, 28, 1), {"hidden": (16, 12)}),
  (dcgan, (28, 28, 1), {"width": 4, "conv_impl": "xla"}),
  (dcgan, (32, 32, 3), {"width": 4, "conv_impl": "xla"}),
]
_NET_IDS = ["mlp", "dcgan28", "dcgan32"]


def _count(variables):
  return state.parameter_count(variables["params"])


def _init(module, x, labels):
  return module.init(jax.random.key(0), x, labels, train=False)


def _perturb(variables, scale=0.5):
  """Random params everywhere (fresh conditional BatchNorm is the identity for every class)."""
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(7), len(leaves))
  leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
  return {**variables, "params": jax.tree.unflatten(tree, leaves)}


@pytest.mark.parametrize("module, shape, kw", _NETS, ids=_NET_IDS)
@pytest.mark.parametrize("conditioning", blocks.GENERATOR_CONDITIONING)
def test_conditional_generator_parameters_and_label_dependence(module, shape, kw, conditioning):
  z, labels = jnp.ones((2, LATENT)), jnp.array([1, 3], jnp.int32)
  plain = module.Generator(image_shape=shape, **kw)
  cond = module.Generator(image_shape=shape, num_classes=K, conditioning=conditioning, **kw)
  plain_vars = jax.eval_shape(lambda: _init(plain, z, None))
  cond_vars = _init(cond, z, labels)
  params = plain_vars["params"]
  if conditioning == "concat":  # One-hot y concatenated to z: K more rows in the first layer.
    first = params["Dense_0"]["kernel"] if "Dense_0" in params else None
    if first is None:  # 32/64-pixel DCGAN: z is a 1x1 map into a transposed conv.
      first = params["ConvTranspose_0"]["kernel"]
      extra = K * first.shape[-1] * first.shape[0] * first.shape[1]
    else:
      extra = K * first.shape[-1]
  else:  # BatchNorm's scale/offset (2C) -> per-class gain/bias (2KC) in every norm layer.
    channels = [p["scale"].shape[-1] for n, p in params.items() if n.startswith("BatchNorm")]
    assert channels
    extra = sum(2 * (K - 1) * c for c in channels)
  assert _count(cond_vars) == _count(plain_vars) + extra
  cond_vars = _perturb(cond_vars)
  apply = jax.jit(lambda y: cond.apply(cond_vars, z, y, train=False))
  out, swapped = apply(labels), apply(labels[::-1])
  assert out.shape == (2, *shape)
  # Two rows of one batch may run in different vector lanes: equal up to float32 round-off
  # through every layer's fan-in (samples are in [-1, 1]).
  fan_ins = tolerances.summed_fan_in(cond_vars["params"])
  same = apply(jnp.array([1, 1], jnp.int32))
  tolerances.assert_float32_close(same[0], same[1], length=fan_ins, magnitude=1.0)
  # The label changes the sample far beyond that round-off.
  tolerances.assert_differ_beyond_roundoff(out, swapped, length=fan_ins, magnitude=1.0)


@pytest.mark.parametrize("module, shape, kw", _NETS, ids=_NET_IDS)
@pytest.mark.parametrize("conditioning", blocks.DISCRIMINATOR_CONDITIONING)
def test_conditional_discriminator_outputs_and_parameters(module, shape, kw, conditioning):
  x, labels = jax.random.normal(jax.random.key(1), (2, *shape)), jnp.array([1, 3], jnp.int32)
  plain = module.Discriminator(**kw)
  cond = module.Discriminator(num_classes=K, conditioning=conditioning, **kw)
  plain_vars, cond_vars = _init(plain, x, None), _init(cond, x, labels)
  out = cond.apply(cond_vars, x, labels, train=False)
  swapped = cond.apply(cond_vars, x, labels[::-1], train=False)
  if conditioning == "acgan":
    logits, class_logits = out
    assert logits.shape == (2,) and class_logits.shape == (2, K)
    # The adversarial output ignores y; the classifier predicts it from x alone: the same
    # computation on the same inputs (labels are only checked), so the same bits.
    tolerances.assert_bitwise_equal(logits, swapped[0])
    tolerances.assert_bitwise_equal(class_logits, swapped[1])
    features = cond_vars["params"]["ClassifierHead_0"]["Dense_0"]["kernel"].shape[0]
    assert _count(cond_vars) == _count(plain_vars) + features * K + K
    return
  assert out.shape == (2,)
  # D's verdict depends on the label, beyond the round-off of its fan-ins. At initialisation a
  # one-hot label is 10 of the 794 inputs of the MLP's first layer (its effect about 40 times the
  # worst-case round-off bound), hence a factor of 10; an ignored label changes no bit.
  length = tolerances.summed_fan_in(cond_vars["params"])
  tolerances.assert_differ_beyond_roundoff(out, swapped, length=length, factor=10)
  if conditioning == "projection":  # psi stays linear; the embedding V adds K x F parameters.
    features = cond_vars["params"]["ProjectionHead_0"]["Embed_0"]["embedding"].shape[-1]
    # The 32/64-pixel DCGAN's final conv has no bias; the projection's linear psi has one.
    bias = 1 if module is dcgan and shape[0] != 28 else 0
    assert _count(cond_vars) == _count(plain_vars) + K * features + bias
  else:  # One-hot label maps / entries as K more input channels / features of the first layer.
    params = plain_vars["params"]
    first = params["Conv_0" if "Conv_0" in params else "Dense_0"]["kernel"]
    per_input = first.shape[-1] * (first.shape[0] * first.shape[1] if first.ndim == 4 else 1)
    assert _count(cond_vars) == _count(plain_vars) + K * per_input


@pytest.mark.parametrize(
  "network",
  [
    lambda: mlp.Generator(image_shape=(4,), hidden=(8,), num_classes=K),
    lambda: dcgan.Discriminator(width=4, num_classes=K),
    lambda: mlp.Discriminator(hidden=(8,), num_classes=K, conditioning="concat"),
  ],
)
def test_conditional_networks_need_labels(network):
  module = network()
  x = jnp.ones((2, 4)) if isinstance(module, mlp.Generator) else jnp.ones((2, 28, 28, 1))
  with pytest.raises(ValueError, match="needs labels"):
    module.init(jax.random.key(0), x, None, train=False)


def test_unknown_conditioning_lists_the_choices():
  with pytest.raises(ValueError, match="'film'.*concat, projection, acgan"):
    mlp.Discriminator(hidden=(8,), num_classes=K, conditioning="film").init(
      jax.random.key(0), jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32), train=False
    )
  with pytest.raises(ValueError, match="batch_norm=True"):
    mlp.Generator(
      image_shape=(4,), hidden=(8,), batch_norm=False, num_classes=K, conditioning="batchnorm"
    ).init(jax.random.key(0), jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32), train=False)


def _tiny_state(d_conditioning, num_classes=K, shape=(6,)):
  g = mlp.Generator(image_shape=shape, hidden=(16,), num_classes=num_classes)
  d = mlp.Discriminator(
    hidden=(16,), dropout=0.0, num_classes=num_classes, conditioning=d_conditioning
  )
  import optax

  return state.create_gan_state(
    jax.random.key(0),
    generator=g,
    discriminator=d,
    latent_dim=LATENT,
    element_shape=shape,
    generator_optimizer=optax.sgd(0.1),
    discriminator_optimizer=optax.sgd(0.1),
    num_classes=num_classes,
  )


def test_acgan_class_loss_matches_cross_entropy_and_reaches_both_players():
  s = _tiny_state("acgan")
  real = jax.random.normal(jax.random.key(2), (8, 6))
  labels = jnp.arange(8, dtype=jnp.int32) % K
  objective = losses.get_objective("non_saturating")
  rng = jax.random.key(3)
  _, d_metrics = steps.discriminator_step(
    s, real, rng, objective=objective, latent_dim=LATENT, labels=labels
  )
  # Independent reference: the same fakes, D's class logits, and numpy's log-softmax.
  z = parallel.local_normal(jax.random.fold_in(rng, steps._D_LATENT), (8, LATENT), None)
  g_vars = {"params": s.generator.params, "batch_stats": s.generator.batch_stats}
  fake, _ = s.generator.apply_fn(g_vars, z, labels, train=True, mutable=["batch_stats"])
  d_vars = {"params": s.discriminator.params}

  def cross_entropy(x):
    class_logits = np.asarray(s.discriminator.apply_fn(d_vars, x, labels, train=True)[1], float)
    log_p = class_logits - np.log(np.exp(class_logits).sum(-1, keepdims=True))
    return -log_p[np.arange(8), np.asarray(labels)].mean()

  expected = cross_entropy(real) + cross_entropy(fake)
  # The same networks evaluated in another program: the round-off of G's and D's fan-ins, the K
  # terms of the log-sum-exp and the batch mean. The cross-entropy moves by at most twice a
  # logit's error (sum |p - y| <= 2), twice (real and fake).
  g_params = s.generator.params
  length = tolerances.summed_fan_in(g_params) + tolerances.summed_fan_in(d_vars) + K + 8
  top = max(
    float(np.abs(s.discriminator.apply_fn(d_vars, x, labels, train=True)[1]).max())
    for x in (real, fake)
  )
  tolerances.assert_float32_close(
    float(d_metrics["d_class_loss"]), expected, length=length, magnitude=4 * top + expected
  )

  # The class term reaches G: with the adversarial loss's weight unchanged, a larger classifier
  # weight changes G's gradient.
  def g_grad_norm(weight):
    _, m = steps.generator_step(
      s,
      real,
      rng,
      objective=objective,
      latent_dim=LATENT,
      ema_decay=0.0,
      labels=labels,
      classifier_weight=weight,
    )
    return float(m["g_grad_norm"]), float(m["g_class_loss"])

  (n0, c0), (n1, c1) = g_grad_norm(0.0), g_grad_norm(10.0)
  # The class loss is computed before the weight scales it: the same operations on the same
  # inputs, so the same bits.
  tolerances.assert_bitwise_equal(c1, c0)
  assert c0 > 0
  # G's gradient passes through G and D forward and backward and sums the batch of 8.
  length = tolerances.gradient_length(g_params, 8) + tolerances.gradient_length(d_vars, 0)
  tolerances.assert_differ_beyond_roundoff(n1, n0, length=length, magnitude=max(n0, n1))


@pytest.mark.parametrize("d_conditioning", ["projection", "concat"])
def test_labels_reach_discriminator_in_train_step(d_conditioning):
  s = _tiny_state(d_conditioning)
  real = jax.random.normal(jax.random.key(2), (8, 6))
  labels = jnp.arange(8, dtype=jnp.int32) % K
  step = jax.jit(
    lambda st, batch: steps.train_step(
      st,
      batch,
      jax.random.key(4),
      objective=losses.get_objective("non_saturating"),
      latent_dim=LATENT,
      conditional=True,
    )
  )
  a, _ = step(s, {"image": real, "label": labels})
  b, _ = step(s, {"image": real, "label": (labels + 1) % K})
  # Other labels, other update: D's updates differ far beyond their round-off (D's gradient of 8
  # real and 8 fake examples, G's forward pass, at the updates' scale; plus the rounding of
  # params + update, an ulp of the parameters).
  before = s.discriminator.params
  updates = [jax.tree.map(jnp.subtract, x.discriminator.params, before) for x in (a, b)]
  scale = max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates[1]))
  params_scale = max(float(jnp.abs(p).max()) for p in jax.tree.leaves(before))
  length = tolerances.gradient_length(before, 16) + tolerances.summed_fan_in(s.generator.params)
  atol = tolerances.float32_atol(length, scale) + tolerances.EPS32 * params_scale
  pairs = zip(*map(jax.tree.leaves, updates), strict=True)
  worst = max(float(jnp.abs(x - y).max()) for x, y in pairs)
  assert worst > 100 * atol, (worst, atol)
  with pytest.raises(ValueError, match="labelled batches"):
    steps.train_step(
      s,
      {"image": real},
      jax.random.key(4),
      objective=losses.get_objective("non_saturating"),
      latent_dim=LATENT,
      conditional=True,
    )


def test_class_grid_has_one_class_per_row_and_one_latent_per_column():
  z, labels = sampling.class_grid_inputs(0, num_classes=4, num_samples=13, latent_dim=5)
  assert z.shape == (12, 5) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
  grid_z = np.asarray(z).reshape(4, 3, 5)
  np.testing.assert_array_equal(grid_z, np.broadcast_to(grid_z[:1], grid_z.shape))
  np.testing.assert_array_equal(grid_z[0], np.asarray(sampling.fixed_latents(0, 3, 5)))
  z, labels = sampling.class_grid_inputs(0, num_classes=10, num_samples=4, latent_dim=2)
  assert z.shape == (10, 2)  # At least one column.


def test_build_networks_rejects_impossible_conditional_setups():
  config = load_config("cgan", "runlocal")
  with pytest.raises(ValueError, match="needs labelled data"):
    gan.build_networks(config, (28, 28, 1), None)
  config.model.name = "sndcgan"
  with pytest.raises(ValueError, match="no class-conditional.*conditional models: .*dcgan"):
    gan.build_networks(config, (32, 32, 3), 10)
  assert "sndcgan" not in gan.conditional_models()
  assert {"dcgan", "mlp", "resnet"} <= set(gan.conditional_models())
  config = load_config("cgan", "runlocal")
  config.model.pack = 2
  with pytest.raises(ValueError, match="pack=2.*conditional"):
    gan.build_networks(config, (28, 28, 1), 10)


def _xla_convs(config):
  """``config`` with XLA's own convolutions in a DCGAN: the same parameters and results,
  compiled several times faster than the CPU fast path (conv_impl_test checks they agree)."""
  if config.model.name == "dcgan":
    config.model.generator.conv_impl = config.model.discriminator.conv_impl = "xla"
  return config


@pytest.mark.parametrize("arg", ["", "generator=batchnorm,discriminator=acgan", "arch=mlp"])
def test_cgan_config_trains_and_draws_one_class_per_row(tmp_path, arg):
  config = _xla_convs(load_config("cgan", ",".join(filter(None, [arg, "runlocal"]))))
  config.parallel.num_devices = 1
  workdir = str(tmp_path / "run")
  gan.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "run_info.json")) as f:
    assert json.load(f)["data"]["conditional"] is True
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_000006.png")))
  # runlocal: 20 samples of 10 classes -> 10 rows of 2 columns of 28-pixel digits (+2 padding).
  assert grid.shape[:2] == (10 * 30 + 2, 2 * 30 + 2)
  samples = gan.sample_from_workdir(workdir, 30, str(tmp_path / "grid.png"))
  assert samples.shape == (30, 28, 28, 1)
  assert np.load(str(tmp_path / "grid.npz"))["labels"].tolist() == [
    k for k in range(10) for _ in range(3)
  ]
  if not arg:  # ganjax.load of the conditional GAN (load_contract.py).
    load_contract.check_sample(workdir, tmp_path, "gan", (28, 28, 1))
    load_contract.check_refusals(workdir, "gan")
    _check_sample_labels(workdir)


def _check_sample_labels(workdir):
  """``run.sample(labels=...)``: one label for all, one per sample, and the range checked."""
  run = ganjax.load(workdir)
  assert run.num_classes == 10
  same = run.sample(4, seed=0, labels=3)
  np.testing.assert_array_equal(same, run.sample(4, seed=0, labels=[3, 3, 3, 3]))
  # The label changes the sample made from the same latent.
  assert not np.array_equal(run.sample(4, seed=0, labels=[0, 1, 2, 3]), same)
  with pytest.raises(errors.ConfigError, match=r"Label 10 is out of range: the run has 10"):
    run.sample(2, labels=10)
  with pytest.raises(errors.ConfigError, match="num_samples must be >= 1, got 0"):
    run.sample(0)


def test_cgan_trains_on_an_image_folder_with_class_subfolders(tmp_path):
  rng = np.random.default_rng(0)
  for k, name in enumerate(["cat", "dog", "frog"]):
    os.makedirs(tmp_path / "data" / name)
    for i in range(6):
      pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) // (k + 1)
      Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
  config = _xla_convs(load_config("cgan", "dataset=folder,runlocal"))
  config.parallel.num_devices = 1
  config.data.dir = str(tmp_path / "data")
  config.num_train_steps = 2
  workdir = str(tmp_path / "run")
  gan.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "run_info.json")) as f:
    assert json.load(f)["data"]["num_classes"] == 3
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_000002.png")))
  assert grid.shape[:2] == (3 * 34 + 2, 6 * 34 + 2)  # 20 samples / 3 classes = 6 per row.


@pytest.mark.slow
def test_conditional_gan_learns_which_mode_each_label_means(tmp_path):
  """On the ring, the label is the mode index: G(z, k) must land on mode k (a training outcome:
  1,200 steps, so a slow test)."""
  config = load_config("gaussian_mixture", "dataset=ring")
  config.parallel.num_devices = 1
  config.model.conditional = True
  config.model.discriminator.conditioning = "projection"
  config.model.latent_dim = 4
  config.model.generator.hidden = (64, 64)
  config.model.discriminator.hidden = (64, 64)
  config.model.discriminator.maxout_pieces = 1
  config.model.discriminator.kernel_init_std = None
  config.optim.g.learning_rate = config.optim.d.learning_rate = 1e-3
  config.batch_size = 256
  config.num_train_steps = 1200
  config.log_every_steps = 600
  config.sample_every_steps = config.checkpoint_every_steps = config.eval_every_steps = 0
  final = gan.train_and_evaluate(config, str(tmp_path / "run"))
  networks = gan.build_networks(config, (2,), 8)
  generate = gan.make_generate_fn(networks)
  labels = jnp.arange(800, dtype=jnp.int32) % 8
  z = jax.random.normal(jax.random.key(5), (800, 4))
  points = np.asarray(generate(final.generator.params, final.generator.batch_stats, z, labels))
  modes = gaussian_mixture.mixture_modes("ring")
  nearest = np.argmin(((points[:, None, :] - modes[None]) ** 2).sum(-1), axis=1)
  # Unconditional sampling would match the label 1/8 of the time.
  assert np.mean(nearest == np.asarray(labels)) > 0.9
