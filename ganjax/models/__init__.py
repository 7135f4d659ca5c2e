"""Architectures. ``config.model.name = "NAME"`` selects the module ``ganjax.models.NAME``.

Every architecture module exposes two flax linen modules:

* ``Generator(image_shape, **hyperparameters)``, applied as ``G.apply(variables, z, labels=None,
  train=...)``: latents ``(B, latent_dim)`` -> samples ``(B, *image_shape)`` in [-1, 1];
* ``Discriminator(**hyperparameters)``, applied as ``D.apply(variables, x, labels=None,
  train=...)``: samples -> logits ``(B,)`` (an ACGAN discriminator returns ``(logits,
  class_logits)``); it reads the input resolution from ``x.shape``.

BatchNorm running averages live in the ``"batch_stats"`` collection and are used when
``train=False``; dropout draws from the ``"dropout"`` rng stream and is off when ``train=False``.
``labels`` is accepted by every model and ignored by the unconditional ones. Models with
class-conditional networks have a ``num_classes`` field on both (``None`` = unconditional), which
training sets from the data when ``config.model.conditional`` is on, and a ``conditioning`` field
(see :mod:`ganjax.models.blocks`).

Modules whose networks need their own data flow (LAPGAN's pyramid levels, SRGAN's low-resolution
inputs, the VAE) name the system that trains them in a module constant ``SYSTEM`` (a module of
:mod:`ganjax.systems`, selected by ``config.task``); they are not architectures of the GAN loop.

A new architecture is one new module here plus one config; there is no registry to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ganjax.errors import ConfigError

# Modules of this package that hold shared code rather than an architecture.
_NOT_ARCHITECTURES = frozenset({"blocks", "layers"})


def _candidate_names() -> list[str]:
  return [
    info.name
    for info in pkgutil.iter_modules(__path__)
    if not info.name.startswith("_") and info.name not in _NOT_ARCHITECTURES
  ]


def _is_architecture(module: ModuleType) -> bool:
  has_networks = hasattr(module, "Generator") and hasattr(module, "Discriminator")
  return has_networks and not hasattr(module, "SYSTEM")


def available_models() -> list[str]:
  """Sorted names of the modules in this package that define a Generator and a Discriminator."""
  names = []
  for name in _candidate_names():
    if _is_architecture(importlib.import_module(f"{__name__}.{name}")):
      names.append(name)
  return sorted(names)


def get_model_module(name: str) -> ModuleType:
  """Imports and returns ``ganjax.models.<name>``.

  Raises:
    ValueError: ``name`` is not an architecture module of this package; the message lists the
      valid names.
  """
  if name in _candidate_names():
    module = importlib.import_module(f"{__name__}.{name}")
    if _is_architecture(module):
      return module
  raise ConfigError(f"Unknown model name {name!r}; valid choices: {', '.join(available_models())}.")
