"""Argument validation shared by the evaluation metrics (private).

Every metric accepts numpy arrays, jax arrays and nested lists; these helpers bring them to the host
as numpy arrays and fail with messages that name the argument and the bad value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ganjax.errors import ConfigError


def as_numeric(name: str, value: Any) -> np.ndarray:
  """``value`` as a real (floating or integer, not bool) numpy array on the host."""
  array = np.asarray(value)
  if array.dtype == object or not (
    np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
  ):
    raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}.")
  return array


def check_finite(name: str, array: np.ndarray) -> None:
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} must be finite; it contains NaN or infinite values.")


def check_features(
  name: str,
  value: Any,
  *,
  num_features: int | None = None,
  other: str | None = None,
  min_samples: int = 1,
  why: str = "",
) -> np.ndarray:
  """Validates a finite (num_samples, num_features) feature matrix; keeps its dtype.

  Args:
    name: The argument name, used in the messages.
    value: The features (numpy or jax array, or nested lists).
    num_features: When given, the required number of features (columns).
    other: The name of the argument ``num_features`` comes from, for the message.
    min_samples: The least number of rows the caller needs.
    why: Appended to the "at least ``min_samples`` samples" message (e.g. "to estimate a
      covariance").
  """
  array = as_numeric(name, value)
  if array.ndim != 2 or array.shape[1] < 1:
    raise ValueError(
      f"{name} must be a 2-D array of shape (num_samples, num_features), got shape {array.shape}."
    )
  if num_features is not None and array.shape[1] != num_features:
    raise ValueError(
      f"{name} must have the same number of features as {other} ({num_features}), got shape "
      f"{array.shape}."
    )
  if array.shape[0] < min_samples:
    raise ConfigError(
      f"{name} needs at least {min_samples} samples{' ' + why if why else ''}, got shape "
      f"{array.shape}."
    )
  check_finite(name, array)
  return array


def check_int(name: str, value: Any, *, minimum: int) -> int:
  """``value`` as a Python int >= ``minimum`` (TypeError for non-integers, including bools)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)
