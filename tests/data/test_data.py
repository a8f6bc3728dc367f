"""Tests of bigtune_jax.data: embedded datasets, file readers (on files written here in the
real formats), splits and the batching / host-sharding pipeline."""

import ast
import gzip
import os
import pathlib
import pickle
import struct

import jax
import numpy as np
import pytest

from bigtune_jax import data

DATA_PACKAGE = pathlib.Path(data.__file__).parent


# ----------------------------------------------------------------------------- helpers


def write_idx(path, array, *, gz=False):
  """Writes ``array`` as an IDX file (big-endian), gzipped if ``gz``."""
  codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
  array = np.asarray(array)
  header = bytes([0, 0, codes[array.dtype.str[1:]], array.ndim])
  header += struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  path = pathlib.Path(path)
  if gz:
    with gzip.open(path, "wb") as f:
      f.write(payload)
  else:
    path.write_bytes(payload)
  return path


def random_mnist(rng, n):
  return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_mnist(folder, rng, *, n_train=30, n_test=7, gz=False):
  folder = pathlib.Path(folder)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images, labels = random_mnist(rng, n)
    names = data.idx.FILES[split]
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{names[0]}{suffix}", images, gz=gz)
    write_idx(folder / f"{names[1]}{suffix}", labels, gz=gz)
    arrays[split] = (images, labels)
  return arrays


def random_cifar(rng, n):
  """CHW-flattened images (N, 3072) and labels, as the CIFAR files store them."""
  return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def write_cifar_bin(path, flat, labels):
  records = np.concatenate([labels.astype(np.uint8)[:, None], flat], axis=1)
  pathlib.Path(path).write_bytes(records.tobytes())


def write_cifar_pickle(path, flat, labels, protocol=2):
  batch = {b"batch_label": b"test", b"labels": [int(l) for l in labels], b"data": flat,
           b"filenames": [b"x.png"] * len(labels)}
  with open(path, "wb") as f:
    pickle.dump(batch, f, protocol=protocol)


def write_cifar(folder, rng, *, binary, per_batch=4):
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  written = {}
  for name in (*data.cifar.TRAIN_BATCHES, data.cifar.TEST_BATCH):
    flat, labels = random_cifar(rng, per_batch)
    if binary:
      write_cifar_bin(folder / f"{name}.bin", flat, labels)
    else:
      write_cifar_pickle(folder / name, flat, labels)
    written[name] = (flat, labels)
  return written


def chw_to_nhwc(flat):
  return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def check_partition(parts, n):
  joined = np.concatenate(parts)
  assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


# ------------------------------------------------------------------ embedded: digits


@pytest.fixture(scope="module")
def digits8():
  return data.load_digits()


def test_digits_shapes_ranges_and_labels(digits8):
  images, labels = digits8["image"], digits8["label"]
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
  assert labels.shape == (1797,) and labels.dtype == np.int32
  assert images.min() == 0.0 and images.max() == 1.0
  counts = np.bincount(labels, minlength=10)
  assert counts.sum() == 1797 and len(counts) == 10 and counts.min() >= 170
  # values are the 0..16 counts of scikit-learn, divided by 16
  np.testing.assert_array_equal(np.unique(images * 16), np.arange(17))


def test_digits_28_view_is_bilinear_upsampling(digits8):
  big = data.load_digits(image_size=28)
  assert big["image"].shape == (1797, 28, 28, 1) and big["image"].dtype == np.float32
  assert big["image"].min() >= 0.0 and big["image"].max() <= 1.0
  np.testing.assert_array_equal(big["label"], digits8["label"])
  expected = jax.image.resize(digits8["image"], (1797, 28, 28, 1), method="linear")
  np.testing.assert_allclose(big["image"], np.asarray(expected), atol=1e-5)
  with pytest.raises(ValueError, match="image_size"):
    data.load_digits(image_size=4)


@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (0.5, 0.5), (1.0,), (0.9, 0.0, 0.1)])
def test_split_indices_disjoint_covering_sizes(digits8, stratify, fractions):
  labels = digits8["label"] if stratify else None
  parts = data.split_indices(1797, fractions, seed=3, labels=labels)
  check_partition(parts, 1797)
  assert len(parts) == len(fractions)  # zip below would drop a missing part silently
  for part, fraction in zip(parts, fractions):
    assert abs(len(part) - fraction * 1797) < 1
    assert np.all(np.diff(part) > 0)  # sorted, no repeats


def test_stratified_split_keeps_class_proportions(digits8):
  labels = digits8["label"]
  fractions = (0.7, 0.1, 0.2)
  parts = data.split_indices(1797, fractions, seed=0, labels=labels)
  totals = np.bincount(labels, minlength=10)
  assert len(parts) == len(fractions)
  for part, fraction in zip(parts, fractions):
    counts = np.bincount(labels[part], minlength=10)
    assert np.all(np.abs(counts - fraction * totals) <= 2), (counts, fraction * totals)


def test_split_is_seeded(digits8):
  labels = digits8["label"]
  for stratify in (None, labels):
    a = data.split_indices(1797, (0.8, 0.2), seed=7, labels=stratify)
    b = data.split_indices(1797, (0.8, 0.2), seed=7, labels=stratify)
    c = data.split_indices(1797, (0.8, 0.2), seed=8, labels=stratify)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.2, -0.2), ()])
def test_split_rejects_bad_fractions(fractions):
  with pytest.raises(ValueError, match="fraction"):
    data.split_indices(10, fractions)


def test_load_dataset_digits_splits():
  splits = data.load_dataset("digits", seed=1, validation_fraction=0.1, test_fraction=0.2)
  sizes = {k: len(v) for k, v in splits.items()}
  assert sizes == {"train": 1258, "validation": 180, "test": 359}
  again = data.load_dataset("digits", seed=1)
  other = data.load_dataset("digits", seed=2)
  for key in ("image", "label"):
    np.testing.assert_array_equal(splits["test"][key], again["test"][key])
  assert not np.array_equal(splits["test"]["image"], other["test"]["image"])
  big = data.load_dataset("digits", image_size=28)
  assert big["train"]["image"].shape[1:] == (28, 28, 1)


# -------------------------------------------------------------------- embedded: toy


def test_linear_toy_matches_seed_002():
  toy = data.linear_regression_toy()
  x, y = toy["x"], toy["y"]
  assert x.shape == y.shape == (100, 1) and x.dtype == y.dtype == np.float32
  slope = float(x[:, 0] @ y[:, 0] / (x[:, 0] @ x[:, 0]))
  assert abs(slope - 2.0) < 0.05
  assert 0.05 < np.std(y - 2.0 * x) < 0.15
  again = data.linear_regression_toy()
  np.testing.assert_array_equal(again["y"], y)
  assert not np.array_equal(data.linear_regression_toy(seed=1)["x"], x)
  noiseless = data.linear_regression_toy(5, slope=-3.0, noise_std=0.0)
  np.testing.assert_allclose(noiseless["y"], -3.0 * noiseless["x"])


def test_load_dataset_linear_toy():
  splits = data.load_dataset("linear_toy", validation_fraction=0.0, test_fraction=0.0)
  assert len(splits["train"]) == 100 and len(splits["validation"]) == len(splits["test"]) == 0


# -------------------------------------------------------------------- embedded: text


def test_stdlib_corpus_is_english_bytes():
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  corpus = data.stdlib_corpus()
  assert corpus.dtype == np.uint8 and corpus.ndim == 1 and corpus.size > 100_000
  first = topics.topics[sorted(topics.topics)[0]].encode("utf-8")
  assert corpus[:len(first)].tobytes() == first
  letters = np.isin(corpus, np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8))
  assert letters.mean() > 0.6
  np.testing.assert_array_equal(data.stdlib_corpus(), corpus)


@pytest.mark.parametrize("block_size,stride", [(8, None), (8, 1), (5, 3), (1, 1)])
def test_lm_windows_shift_by_one(block_size, stride):
  tokens = np.frombuffer(b"the quick brown fox jumps over the lazy dog", np.uint8)
  windows = data.lm_windows(tokens, block_size, stride=stride)
  step = block_size if stride is None else stride
  inputs, targets = windows["inputs"], windows["targets"]
  assert inputs.shape == targets.shape == ((len(tokens) - 1 - block_size) // step + 1, block_size)
  for i in range(len(inputs)):
    np.testing.assert_array_equal(inputs[i], tokens[i * step:i * step + block_size])
    np.testing.assert_array_equal(targets[i], tokens[i * step + 1:i * step + block_size + 1])
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
  assert data.lm_windows(tokens[:block_size], block_size)["inputs"].shape == (0, block_size)


def test_split_tokens_and_load_dataset_text(tmp_path):
  tokens = np.arange(100, dtype=np.uint8)
  train, validation = data.split_tokens(tokens, 0.1)
  assert len(validation) == 10
  np.testing.assert_array_equal(np.concatenate([train, validation]), tokens)
  splits = data.load_dataset("text", block_size=32)
  assert set(splits) == {"train", "validation"}
  for split in splits.values():
    assert split["inputs"].shape[1:] == (32,) and split["inputs"].dtype == np.uint8
  corpus = data.stdlib_corpus()
  assert len(splits["validation"]) == (round(0.1 * len(corpus)) - 1 - 32) // 32 + 1
  # user text: a folder of .txt files is read in sorted name order
  (tmp_path / "b.txt").write_bytes(b"world. " * 20)
  (tmp_path / "a.txt").write_bytes("héllo ".encode() * 20)
  (tmp_path / "ignored.md").write_bytes(b"#")
  expected = "héllo ".encode() * 20 + b"world. " * 20
  assert data.read_text(tmp_path).tobytes() == expected
  assert data.read_text(tmp_path / "b.txt").tobytes() == b"world. " * 20
  user = data.load_dataset("text", tmp_path, block_size=4, validation_fraction=0.25)
  assert user["train"]["inputs"][0].tobytes() == expected[:4]


def test_split_tokens_three_ways_and_text_splits():
  """Test after validation at the end of the stream, each round(fraction * len) tokens:
  the one cut that load_dataset("text") and the LM experiments share."""
  tokens = np.arange(101, dtype=np.uint8)
  train, validation, test = data.split_tokens(tokens, 0.1, 0.05)
  assert (len(train), len(validation), len(test)) == (86, 10, 5)
  np.testing.assert_array_equal(np.concatenate([train, validation, test]), tokens)
  with pytest.raises(ValueError, match="validation_fraction \\+ test_fraction must be < 1"):
    data.split_tokens(tokens, 0.5, 0.5)
  with pytest.raises(ValueError, match=r"test_fraction must lie in \[0, 1\), got 1.5"):
    data.split_tokens(tokens, 0.1, 1.5)
  splits = data.text_splits(tokens, 4, 0.1, 0.05)
  assert {k: len(v) for k, v in splits.items()} == {"train": 21, "validation": 2, "test": 1}
  assert splits["test"]["inputs"][0].tolist() == [96, 97, 98, 99]
  assert set(data.text_splits(tokens, 4, 0.1)) == {"train", "validation"}
  with pytest.raises(ValueError, match=r"corpus: its test part \(5 bytes\) is shorter than "
                                       r"one window of block_size \+ 1 = 6 bytes"):
    data.text_splits(tokens, 5, 0.1, 0.05, what="corpus")


def test_sizes_are_integers_by_the_library_wide_rule():
  """bigtune_jax.validation's one rule, as for FitConfig: integers (NumPy's too) pass;
  integral floats are refused like every other non-integer."""
  tokens = np.arange(10, dtype=np.uint8)
  np.testing.assert_array_equal(data.lm_windows(tokens, np.int64(4), stride=2)["inputs"],
                                data.lm_windows(tokens, 4, stride=2)["inputs"])
  assert len(list(indexed_dataset(10).batches(np.int32(4)))) == 2
  for bad in (4.0, float("inf"), float("nan"), None, "4", True, 2.5):
    with pytest.raises(ValueError, match="block_size"):
      data.lm_windows(tokens, bad)
    with pytest.raises(ValueError, match="num_examples"):
      data.linear_regression_toy(bad)


def test_test_fraction_only_bounds_datasets_it_splits():
  splits = data.load_dataset("text", validation_fraction=0.85, test_fraction=0.2)
  assert len(splits["validation"]) > len(splits["train"])


def test_read_text_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    data.read_text(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match=r"\*\.txt"):
    data.read_text(tmp_path)
  (tmp_path / "empty.txt").write_bytes(b"")
  with pytest.raises(ValueError, match="empty.txt"):
    data.read_text(tmp_path / "empty.txt")


# ------------------------------------------------------------------------ IDX (MNIST)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype,shape", [("u1", (3, 28, 28)), ("u1", (6,)), ("i2", (2, 3)),
                                         ("i4", (4,)), ("f4", (2, 2, 2)), ("f8", (3,))])
def test_idx_round_trip(tmp_path, gz, dtype, shape):
  rng = np.random.default_rng(0)
  array = (rng.standard_normal(shape) * 100).astype(dtype)
  path = write_idx(tmp_path / ("x.gz" if gz else "x"), array, gz=gz)
  back = data.read_idx(path)
  assert back.shape == shape and back.dtype == np.dtype(dtype) and back.dtype.isnative
  np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_and_load_dataset(tmp_path, gz):
  written = write_mnist(tmp_path, np.random.default_rng(1), gz=gz)
  loaded = data.load_mnist(tmp_path)
  for split, (images, labels) in written.items():
    np.testing.assert_array_equal(loaded[split]["image"][..., 0], images)
    np.testing.assert_array_equal(loaded[split]["label"], labels)
    assert loaded[split]["label"].dtype == np.int32
  for name in ("mnist", "fashion_mnist"):
    splits = data.load_dataset(name, tmp_path, validation_fraction=0.2)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (24, 6, 7)
    assert splits["test"]["image"].dtype == np.float32
    np.testing.assert_allclose(splits["test"]["image"][..., 0],
                               written["test"][0].astype(np.float32) / 255)


def test_mnist_missing_file(tmp_path):
  write_mnist(tmp_path, np.random.default_rng(2))
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
    data.load_mnist(tmp_path)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.load_mnist(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nothing"):
    data.read_idx(tmp_path / "nothing")


def test_idx_wrong_magic(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(b"PK\x03\x04" + bytes(100))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic number 0x504B0304"):
    data.read_idx(path)
  path.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))  # unknown type code
  with pytest.raises(ValueError, match="magic"):
    data.read_idx(path)
  path.write_bytes(b"\x00\x00")
  with pytest.raises(ValueError, match="too short"):
    data.read_idx(path)


def test_idx_truncated_and_trailing(tmp_path):
  images = np.zeros((5, 28, 28), np.uint8)
  raw = write_idx(tmp_path / "full", images).read_bytes()
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(raw[:-10])
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: truncated.*3920"):
    data.read_idx(path)
  path.write_bytes(raw[:9])  # header cut inside the dimensions
  with pytest.raises(ValueError, match="truncated header"):
    data.read_idx(path)
  path.write_bytes(raw + b"\x00")
  with pytest.raises(ValueError, match="trailing bytes"):
    data.read_idx(path)
  gz_path = tmp_path / "train-images-idx3-ubyte.gz"
  gz_path.write_bytes(gzip.compress(raw)[:-20])
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz"):
    data.read_idx(gz_path)


def test_mnist_wrong_shapes(tmp_path):
  rng = np.random.default_rng(3)
  write_mnist(tmp_path, rng)
  write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((30, 27, 27), np.uint8))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*\(N, 28, 28\)"):
    data.load_mnist(tmp_path)
  write_mnist(tmp_path, rng)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(6, np.uint8))
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*one per image"):
    data.load_mnist(tmp_path)
  write_mnist(tmp_path, rng)
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(30, 10, np.uint8))
  with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*out of range"):
    data.load_mnist(tmp_path)


# ---------------------------------------------------------------------------- CIFAR-10


def test_cifar_binary_round_trip(tmp_path):
  flat, labels = random_cifar(np.random.default_rng(4), 6)
  write_cifar_bin(tmp_path / "data_batch_1.bin", flat, labels)
  batch = data.read_cifar10_binary(tmp_path / "data_batch_1.bin")
  assert batch["image"].shape == (6, 32, 32, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["image"], chw_to_nhwc(flat))
  np.testing.assert_array_equal(batch["label"], labels)
  # red plane first: pixel (h, w) of channel c is byte c * 1024 + h * 32 + w
  assert batch["image"][2, 5, 7, 1] == flat[2, 1024 + 5 * 32 + 7]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_round_trip(tmp_path, protocol):
  flat, labels = random_cifar(np.random.default_rng(5), 3)
  write_cifar_pickle(tmp_path / "test_batch", flat, labels, protocol=protocol)
  if protocol == 2:  # the official batches name numpy 1's module, numpy.core
    raw = (tmp_path / "test_batch").read_bytes()
    assert b"numpy._core.multiarray\n" in raw
    (tmp_path / "test_batch").write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
  batch = data.read_cifar10_pickle(tmp_path / "test_batch")
  np.testing.assert_array_equal(batch["image"], chw_to_nhwc(flat))
  np.testing.assert_array_equal(batch["label"], labels)
  assert batch["label"].dtype == np.int32


@pytest.mark.parametrize("binary,subfolder", [(True, ""), (False, ""),
                                              (True, "cifar-10-batches-bin"),
                                              (False, "cifar-10-batches-py")])
def test_load_cifar10(tmp_path, binary, subfolder):
  written = write_cifar(tmp_path / subfolder, np.random.default_rng(6), binary=binary)
  loaded = data.load_cifar10(tmp_path)
  train_flat = np.concatenate([written[n][0] for n in data.cifar.TRAIN_BATCHES])
  np.testing.assert_array_equal(loaded["train"]["image"], chw_to_nhwc(train_flat))
  np.testing.assert_array_equal(loaded["test"]["label"], written["test_batch"][1])
  splits = data.load_dataset("cifar10", tmp_path, validation_fraction=0.25)
  assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (15, 5, 4)
  assert splits["train"]["image"].dtype == np.float32 and splits["train"]["image"].max() <= 1


def test_cifar_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
    data.load_cifar10(tmp_path)
  write_cifar(tmp_path, np.random.default_rng(7), binary=True)
  os.remove(tmp_path / "test_batch.bin")
  with pytest.raises(FileNotFoundError, match="test_batch.bin"):
    data.load_cifar10(tmp_path)


def test_cifar_malformed(tmp_path):
  flat, labels = random_cifar(np.random.default_rng(8), 2)
  path = tmp_path / "data_batch_1.bin"
  write_cifar_bin(path, flat, labels)
  path.write_bytes(path.read_bytes()[:-1])
  with pytest.raises(ValueError, match=r"data_batch_1\.bin: 6145 bytes.*3073"):
    data.read_cifar10_binary(path)
  write_cifar_bin(path, flat, np.array([3, 12]))
  with pytest.raises(ValueError, match=r"data_batch_1\.bin: labels span 3\.\.12"):
    data.read_cifar10_binary(path)
  pickled = tmp_path / "data_batch_2"
  write_cifar_pickle(pickled, flat, labels)
  pickled.write_bytes(pickled.read_bytes()[:100])
  with pytest.raises(ValueError, match="data_batch_2: not a readable"):
    data.read_cifar10_pickle(pickled)
  write_cifar_pickle(pickled, flat[:, :3000], labels)
  with pytest.raises(ValueError, match=r"data_batch_2.*\(N, 3072\)"):
    data.read_cifar10_pickle(pickled)
  write_cifar_pickle(pickled, flat, labels[:1])
  with pytest.raises(ValueError, match="one per image"):
    data.read_cifar10_pickle(pickled)


class _Exploit:
  def __reduce__(self):
    return (os.getcwd, ())


def test_cifar_pickle_refuses_foreign_globals(tmp_path):
  path = tmp_path / "data_batch_1"
  with open(path, "wb") as f:
    pickle.dump({b"data": _Exploit(), b"labels": []}, f)
  with pytest.raises(ValueError, match=r"refusing to load the global (posix|nt)\.getcwd"):
    data.read_cifar10_pickle(path)


# ------------------------------------------------------------------------ load_dataset


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "imagenet"}, "unknown dataset"),
    ({"name": "mnist"}, "no embedded copy"),
    ({"name": "digits", "data_dir": "/tmp"}, "data_dir must be None"),
    ({"name": "mnist", "data_dir": "/tmp", "image_size": 28}, "image_size applies"),
    ({"name": "digits", "block_size": 8}, "block_size applies"),
    ({"name": "digits", "validation_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
    ({"name": "digits", "validation_fraction": -0.1}, "validation_fraction"),
])
def test_load_dataset_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.load_dataset(**kwargs)


# ---------------------------------------------------------------------------- pipeline


def indexed_dataset(n):
  return data.ArrayDataset({"index": np.arange(n),
                            "x": np.arange(n * 6, dtype=np.float32).reshape(n, 3, 2) + 1})


def collect(dataset, batch_size, **kwargs):
  return list(dataset.batches(batch_size, **kwargs))


def check_batch_rows(dataset, batch):
  """Valid rows carry their example; padding rows are zeros."""
  mask = batch["mask"]
  np.testing.assert_array_equal(batch["x"][mask], dataset["x"][batch["index"][mask]])
  assert not np.any(batch["x"][~mask]) and not np.any(batch["index"][~mask])


def test_drop_remainder():
  dataset = indexed_dataset(103)
  batches = collect(dataset, 10, seed=0, epoch=0, remainder="drop")
  assert len(batches) == dataset.steps_per_epoch(10, "drop") == 10
  for batch in batches:
    assert set(batch) == {"index", "x", "mask"}
    assert batch["x"].shape == (10, 3, 2) and batch["mask"].dtype == np.bool_
    assert batch["mask"].all()
    check_batch_rows(dataset, batch)
  seen = np.concatenate([b["index"] for b in batches])
  assert len(np.unique(seen)) == 100  # each at most once; the 3 left over are dropped


def test_pad_remainder():
  dataset = indexed_dataset(103)
  batches = collect(dataset, 10, seed=0, epoch=1, remainder="pad")
  assert len(batches) == dataset.steps_per_epoch(10, "pad") == 11
  assert all(b["index"].shape == (10,) for b in batches)
  assert [int(b["mask"].sum()) for b in batches] == [10] * 10 + [3]
  assert batches[-1]["mask"].tolist() == [True] * 3 + [False] * 7
  for batch in batches:
    check_batch_rows(dataset, batch)
  seen = np.concatenate([b["index"][b["mask"]] for b in batches])
  check_partition([seen], 103)  # every example exactly once


def test_order_depends_on_seed_and_epoch_only():
  dataset = indexed_dataset(50)
  order = lambda **kw: np.concatenate([b["index"] for b in collect(dataset, 5, **kw)])
  epoch3 = order(seed=1, epoch=3)
  np.testing.assert_array_equal(epoch3, order(seed=1, epoch=3))
  np.testing.assert_array_equal(epoch3, data.epoch_order(50, seed=1, epoch=3))
  assert not np.array_equal(epoch3, order(seed=1, epoch=4))
  assert not np.array_equal(epoch3, order(seed=2, epoch=3))
  np.testing.assert_array_equal(order(seed=1, epoch=3, shuffle=False), np.arange(50))
  resumed = collect(dataset, 5, seed=1, epoch=3, start_step=4)
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in resumed]), epoch3[20:])


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_host_shards_partition_the_global_batch(process_count, remainder):
  dataset = indexed_dataset(37)
  kwargs = dict(seed=5, epoch=2, remainder=remainder)
  global_batches = collect(dataset, 8, process_index=0, process_count=1, **kwargs)
  hosts = [collect(dataset, 8, process_index=p, process_count=process_count, **kwargs)
           for p in range(process_count)]
  for step, global_batch in enumerate(global_batches):
    shards = [host[step] for host in hosts]
    assert all(s["index"].shape == (8 // process_count,) for s in shards)
    for key in ("index", "x", "mask"):  # contiguous slices, in process order
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), global_batch[key])
    valid = np.concatenate([s["index"][s["mask"]] for s in shards])
    assert len(np.unique(valid)) == len(valid)  # disjoint
  assert all(len(host) == len(global_batches) for host in hosts)
  # defaults come from jax: one process here
  default = collect(dataset, 8, **kwargs)
  assert len(default) == len(global_batches)
  np.testing.assert_array_equal(default[0]["index"], global_batches[0]["index"])


def test_steps_per_epoch_and_empty_dataset():
  assert data.steps_per_epoch(100, 10, "drop") == data.steps_per_epoch(100, 10, "pad") == 10
  assert data.steps_per_epoch(9, 10, "drop") == 0 and data.steps_per_epoch(9, 10, "pad") == 1
  empty = data.ArrayDataset({"x": np.zeros((0, 2))})
  assert len(empty) == 0 and collect(empty, 4, remainder="pad") == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=6, process_count=4, process_index=0), "multiple of process_count"),
    (dict(batch_size=8, process_count=4, process_index=4), r"process_index .* \[0, 4\)"),
    (dict(batch_size=8, remainder="keep"), "remainder must be one of"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=8, start_step=99), "start_step"),
    (dict(batch_size=8, epoch=-1), "epoch"),
])
def test_batches_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    indexed_dataset(20).batches(**kwargs)  # raised at the call, before iterating


def test_array_dataset_errors():
  with pytest.raises(ValueError, match="same leading dimension"):
    data.ArrayDataset({"x": np.zeros(3), "y": np.zeros(4)})
  with pytest.raises(ValueError, match="same leading dimension"):
    data.ArrayDataset({})
  with pytest.raises(ValueError, match="'mask' is reserved"):
    data.ArrayDataset({"mask": np.zeros(3)})


def test_data_imports_neither_models_nor_train():
  for path in DATA_PACKAGE.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
      for name in names:
        assert not name.startswith(("bigtune_jax.models", "bigtune_jax.train")), (path, name)
