"""MNIST and Fashion-MNIST from their IDX files (seed 004 §4.1: MNIST, 784 inputs).

Seed 004 §4.1 downloads MNIST with torchvision; here nothing is downloaded: users pass
``--data-dir`` with the four standard files, raw or gzipped (``NAME`` or ``NAME.gz``):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``. Fashion-MNIST uses the same names and format.

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number, two zero bytes,
a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and
the number of dimensions; then each dimension as a big-endian uint32; then the values,
big-endian, row-major. ``read_idx`` checks every part and that the file holds exactly the
announced number of bytes: a wrong magic number, a truncated file or trailing bytes raise a
``ValueError`` naming the file.
"""

import gzip
import math
import pathlib
import struct
import zlib

import numpy as np

_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
FILES = {  # split -> (images, labels); each may also end in .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: pathlib.Path) -> bytes:
  if path.suffix != ".gz":
    return path.read_bytes()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
    raise ValueError(f"{path}: not a complete gzip file ({error})") from error


def read_idx(path) -> np.ndarray:
  """Reads one IDX file (raw, or gzipped if its name ends in .gz) into a native-endian array."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such IDX file")
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise ValueError(f"{path}: {len(raw)} bytes, too short for the 4-byte IDX magic number")
  zeros, code, ndim = raw[:2], raw[2], raw[3]
  if zeros != b"\x00\x00" or code not in _IDX_TYPES:
    raise ValueError(
        f"{path}: magic number 0x{raw[:4].hex().upper()} is not IDX; expected two zero bytes, "
        "a type code 08/09/0B/0C/0D/0E and the number of dimensions (0x00000803 for images, "
        "0x00000801 for labels)")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated header: {len(raw)} bytes, expected {header} "
                     f"for {ndim} dimensions")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = np.dtype(_IDX_TYPES[code])
  expected = math.prod(shape) * dtype.itemsize
  if len(raw) - header != expected:
    what = "truncated" if len(raw) - header < expected else "trailing bytes"
    raise ValueError(f"{path}: {what}: {len(raw) - header} data bytes, expected {expected} "
                     f"for shape {shape} of {dtype.name}")
  data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
  return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: pathlib.Path, name: str) -> pathlib.Path:
  for candidate in (data_dir / name, data_dir / f"{name}.gz"):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"{data_dir}: no {name} or {name}.gz (MNIST / Fashion-MNIST needs "
                          f"{', '.join(n for pair in FILES.values() for n in pair)})")


def load_mnist(data_dir) -> dict[str, dict[str, np.ndarray]]:
  """MNIST or Fashion-MNIST from ``data_dir``: ``{"train": ..., "test": ...}``.

  Returns:
    For each split ``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}``, as in the files.
  """
  data_dir = pathlib.Path(data_dir)
  if not data_dir.is_dir():
    raise FileNotFoundError(f"{data_dir}: no such folder (expected the MNIST IDX files)")
  splits = {}
  for split, (image_name, label_name) in FILES.items():
    image_path, label_path = _find(data_dir, image_name), _find(data_dir, label_name)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
      raise ValueError(f"{image_path}: {images.dtype.name} array of shape {images.shape}, "
                       f"expected uint8 images of shape (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
      raise ValueError(f"{label_path}: {labels.dtype.name} array of shape {labels.shape}, "
                       f"expected uint8 labels of shape ({images.shape[0]},), one per image "
                       f"of {image_path.name}")
    if labels.size and labels.max() >= NUM_CLASSES:
      raise ValueError(f"{label_path}: label {labels.max()} out of range, expected 0..9")
    splits[split] = {"image": images[..., None], "label": labels.astype(np.int32)}
  return splits
