"""Tensors of a PyTorch zip archive (``torch.save`` since PyTorch 1.6, or a TorchScript module),
read without PyTorch.

Such an archive is a zip file with one top-level folder holding ``data.pkl`` (a pickle of the
object tree: a state dict, or a TorchScript module's attributes) and ``data/<key>``, the raw
little-endian bytes of each tensor storage. :func:`read_tensors` unpickles ``data.pkl`` with an
unpickler that knows only the few globals such a tree needs (tensor and parameter rebuilding,
storage types, TorchScript's list builders and classes, ``OrderedDict``) and refuses every other
one, so reading a file runs none of its code (unlike ``pickle.load`` or ``torch.load`` with
``weights_only=False``). The tensors come back as numpy arrays named by their attribute path
(``net.layers.conv.weight``), with the other attributes (``stride``, ``padding``, ...) alongside.

The format is PyTorch's ``torch/serialization.py`` (``_load``, ``persistent_load``) and
``torch/_utils.py`` (``_rebuild_tensor_v2``); TorchScript archives add ``constants.pkl`` and
``code/`` (the module's source, not needed for its tensors).
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from ganjax.errors import ConfigError

__all__ = ["TorchArchive", "read_archive", "read_tensors"]

# PyTorch storage type name -> numpy dtype (little-endian, as every archive written on x86/ARM).
_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class _ScriptObject:
  """An instance of a pickled TorchScript class: its state (a dict of attributes) is kept."""

  state: Any = None

  def __init__(self, *args: Any) -> None:
    del args

  def __setstate__(self, state: Any) -> None:
    self.state = state


class _Storage:
  """A tensor storage: which ``data/<key>`` file holds it, and its dtype."""

  def __init__(self, key: str, dtype: Any) -> None:
    self.key, self.dtype = key, dtype


class _ArchiveUnpickler(pickle.Unpickler):
  """Unpickles ``data.pkl``: tensors are rebuilt from the archive's storages; any global that is
  not part of PyTorch's tensor format is refused."""

  def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: str) -> None:
    super().__init__(file)
    self._archive, self._prefix, self._path = archive, prefix, path
    self._storages: dict[str, np.ndarray] = {}
    self._classes: dict[str, type] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return self._rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, backward_hooks: data
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch.jit._pickle" and name.startswith("build_"):
      return lambda value: value  # build_intlist([1, 2]) and friends: the plain list.
    if module.startswith("__torch__."):  # A TorchScript module or class: keep its attributes.
      key = f"{module}.{name}"
      if key not in self._classes:
        self._classes[key] = type(name, (_ScriptObject,), {"torch_class": key})
      return self._classes[key]
    raise ConfigError(
      f"{self._path!r} is not a plain PyTorch tensor archive: its pickle needs {module}.{name}, "
      "which ganjax does not run (only tensors, storages and TorchScript attributes are read)."
    )

  def persistent_load(self, pid: Any) -> _Storage:
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage" or storage_type not in _STORAGE_DTYPES:
      raise ConfigError(f"{self._path!r}: unsupported storage {kind!r} of type {storage_type!r}.")
    return _Storage(str(key), _STORAGE_DTYPES[storage_type])

  def _storage(self, storage: _Storage) -> np.ndarray:
    if storage.key not in self._storages:
      raw = self._archive.read(f"{self._prefix}/data/{storage.key}")
      self._storages[storage.key] = np.frombuffer(raw, dtype=storage.dtype)
    return self._storages[storage.key]

  def _rebuild_tensor(
    self, storage: _Storage, offset: int, size: Any, stride: Any, *unused: Any
  ) -> np.ndarray:
    del unused  # requires_grad, backward hooks, metadata.
    flat = self._storage(storage)
    size, stride = tuple(size), tuple(stride)
    if not size:
      return np.array(flat[offset])
    if offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) >= len(flat):
      raise ConfigError(f"{self._path!r}: a tensor of shape {size} overruns its storage.")
    view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False
    )
    return np.ascontiguousarray(view)  # A C-contiguous copy, off the archive bytes.


class TorchArchive(dict):
  """Name -> value of every leaf of the archive's object tree (tensors as numpy arrays).

  ``script_classes`` maps each TorchScript module path to its class (``{"net":
  "__torch__.inceptionv3.InceptionV3", ...}``); empty for a plain state dict.
  """

  def __init__(self, leaves: dict[str, Any], script_classes: dict[str, str]) -> None:
    super().__init__(leaves)
    self.script_classes = script_classes

  def tensors(self) -> dict[str, np.ndarray]:
    return {k: v for k, v in self.items() if isinstance(v, np.ndarray)}


def _flatten(obj: Any, path: str, leaves: dict[str, Any], classes: dict[str, str]) -> None:
  if isinstance(obj, _ScriptObject):
    classes[path] = obj.torch_class
    obj = obj.state if isinstance(obj.state, dict) else {}
  if isinstance(obj, dict):
    for key, value in obj.items():
      _flatten(value, f"{path}.{key}" if path else str(key), leaves, classes)
  else:
    leaves[path] = obj


def read_archive(path: str | os.PathLike) -> TorchArchive:
  """Every leaf of a PyTorch zip archive's object tree, tensors as numpy arrays (no PyTorch).

  Raises:
    ValueError: not a zip archive with a ``data.pkl`` (e.g. a ``.pth`` in PyTorch's legacy
      format, from before 1.6, which needs ``torch.load``), or a pickle that needs anything but
      tensors (the message names the global).
  """
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise ConfigError(
      f"{path!r} is not a PyTorch zip archive (torch.save since PyTorch 1.6, or TorchScript); "
      "files in the legacy format need torch.load."
    )
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ConfigError(f"{path!r} is a zip file but no PyTorch archive (no top-level data.pkl).")
    prefix = pickles[0].split("/")[0]
    with archive.open(pickles[0]) as f:
      root = _ArchiveUnpickler(f, archive, prefix, path).load()
  leaves: dict[str, Any] = {}
  classes: dict[str, str] = {}
  _flatten(root, "", leaves, classes)
  return TorchArchive(leaves, classes)


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch zip archive by name, as numpy arrays (:func:`read_archive`)."""
  return read_archive(path).tensors()
