"""CIFAR-10 from its binary or python batches (seed 004 §4.2-4.3: CIFAR-10, ToTensor).

Seed 004 downloads CIFAR-10 with torchvision; here users pass ``--data-dir`` with the
extracted archive of https://www.cs.toronto.edu/~kriz/cifar.html, either version:

* binary: ``data_batch_1.bin`` ... ``data_batch_5.bin``, ``test_batch.bin``; each record is
  1 label byte and 3,072 image bytes (1,024 red, then green, then blue, rows of 32 pixels);
* python: ``data_batch_1`` ... ``data_batch_5``, ``test_batch``; each a pickled dict with
  ``b"data"`` (uint8 ``(N, 3072)``, the same CHW order) and ``b"labels"`` (N ints).

``data_dir`` may be the batch folder itself or the folder holding ``cifar-10-batches-bin``
or ``cifar-10-batches-py``; the binary version wins if both are there.

Choices:

* Images are returned NHWC ``(N, 32, 32, 3)`` uint8 (transposed from CHW), labels int32.
* Pickle can run code, so the python batches are read by an unpickler that refuses every
  global except the few numpy needs to rebuild an array (and ``_codecs.encode``, used by
  pickles of bytes); a file asking for anything else raises ``ValueError``. Still, read
  files you trust.
* A batch may hold any number of records (tests write small ones); the real ones hold 10,000.
"""

import codecs
import pathlib
import pickle

import numpy as np

IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
NUM_CLASSES = 10
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_SUBFOLDERS = ("cifar-10-batches-bin", "cifar-10-batches-py")

_NUMPY_GLOBALS = (  # what numpy's own pickles of arrays need: (module, name, object)
    ("multiarray", "_reconstruct", np.zeros(0).__reduce__()[0]),
    ("multiarray", "scalar", np.float64(0).__reduce__()[0]),
    ("numeric", "_frombuffer", np.zeros(1).__reduce_ex__(5)[0]),  # protocol 5
)
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes pickled with protocol 2
    **{(f"{package}.{module}", name): value  # numpy 1 and numpy 2 module names
       for package in ("numpy.core", "numpy._core") for module, name, value in _NUMPY_GLOBALS},
}


class _ArrayUnpickler(pickle.Unpickler):
  """An unpickler for dicts, lists, bytes, numbers and numpy arrays only."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
    return _ALLOWED_GLOBALS[(module, name)]


def _check_labels(labels: np.ndarray, path: pathlib.Path) -> np.ndarray:
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..9")
  return labels.astype(np.int32)


def _to_nhwc(flat: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def read_cifar10_binary(path) -> dict[str, np.ndarray]:
  """One binary batch: ``{"image": uint8 (N, 32, 32, 3), "label": int32 (N,)}``."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such CIFAR-10 binary batch")
  raw = np.fromfile(path, dtype=np.uint8)
  if raw.size == 0 or raw.size % RECORD_BYTES:
    raise ValueError(f"{path}: {raw.size} bytes is not a positive multiple of {RECORD_BYTES} "
                     "(1 label byte + 3,072 image bytes per record): truncated, or not a "
                     "CIFAR-10 binary batch")
  records = raw.reshape(-1, RECORD_BYTES)
  return {"image": _to_nhwc(records[:, 1:]), "label": _check_labels(records[:, 0], path)}


def read_cifar10_pickle(path) -> dict[str, np.ndarray]:
  """One python (pickle) batch: ``{"image": uint8 (N, 32, 32, 3), "label": int32 (N,)}``."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such CIFAR-10 python batch")
  try:
    with open(path, "rb") as f:
      batch = _ArrayUnpickler(f, encoding="bytes").load()
  except Exception as error:  # truncated or foreign pickles fail in many ways
    raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({error!r}); expected a "
                     "pickled dict with b'data' and b'labels'") from error
  if not isinstance(batch, dict):
    raise ValueError(f"{path}: holds a {type(batch).__name__}, expected a dict with b'data' "
                     "and b'labels'")
  batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
  if "data" not in batch or "labels" not in batch:
    raise ValueError(f"{path}: keys {sorted(batch)}, expected b'data' and b'labels'")
  data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
    raise ValueError(f"{path}: b'data' is a {data.dtype.name} array of shape {data.shape}, "
                     f"expected uint8 of shape (N, {IMAGE_BYTES})")
  if labels.shape != data.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{path}: b'labels' has shape {labels.shape} ({labels.dtype.name}), "
                     f"expected {data.shape[0]} integers, one per image")
  return {"image": _to_nhwc(data), "label": _check_labels(labels, path)}


def _batch_folder(data_dir: pathlib.Path) -> tuple[pathlib.Path, bool]:
  """The folder holding the batches, and whether they are the binary version."""
  for folder in (data_dir, *(data_dir / sub for sub in _SUBFOLDERS)):
    if (folder / f"{TRAIN_BATCHES[0]}.bin").is_file():
      return folder, True
    if (folder / TRAIN_BATCHES[0]).is_file():
      return folder, False
  raise FileNotFoundError(
      f"{data_dir}: no CIFAR-10 batches: expected data_batch_1.bin ... data_batch_5.bin and "
      "test_batch.bin (binary version) or data_batch_1 ... data_batch_5 and test_batch (python "
      f"version), in this folder or in {' or '.join(_SUBFOLDERS)}")


def load_cifar10(data_dir) -> dict[str, dict[str, np.ndarray]]:
  """CIFAR-10 from ``data_dir``: ``{"train": 5 batches joined, "test": test_batch}``.

  Returns:
    For each split ``{"image": uint8 (N, 32, 32, 3), "label": int32 (N,)}``.
  """
  data_dir = pathlib.Path(data_dir)
  if not data_dir.is_dir():
    raise FileNotFoundError(f"{data_dir}: no such folder (expected the CIFAR-10 batches)")
  folder, binary = _batch_folder(data_dir)
  suffix, read = (".bin", read_cifar10_binary) if binary else ("", read_cifar10_pickle)
  train = [read(folder / f"{name}{suffix}") for name in TRAIN_BATCHES]
  return {
      "train": {key: np.concatenate([b[key] for b in train]) for key in ("image", "label")},
      "test": read(folder / f"{TEST_BATCH}{suffix}"),
  }
