"""A language-model corpus as packed token blocks: tokenized once, cached, memory-mapped.

Training a pretrained model on your own text (seed 001 §4.2: new data for a pretrained
model) needs the text in the model's token ids. ``load_token_dataset`` reads a text file,
a folder of them (recursively, in sorted order) or a list of either; tokenizes it once
into ``cache_dir/tokens-<key>.bin``, a flat ``uint16`` (vocabulary <= 65,536) or
``uint32`` array; and serves it through ``np.memmap``, so the corpus is never a second time
in memory. Each file is one document, encoded as ``tokenizer.encode(text)`` does, so with
the special tokens its ``tokenizer.json`` post-processor adds (BOS first for Llama-style
tokenizers, nothing for GPT-2's), as transformers' ``tokenizer(text)`` in a training
pipeline does, and followed by EOS (unless the post-processor already ended it with EOS).
The key hashes ``FORMAT`` (what a document becomes), the tokenizer's vocabulary and rules
and every file's path, size and modification time: change any and the cache is rebuilt.
A JSON sidecar, ``tokens-<key>.json``, records them with the dtype, the token count, the
tokenizer's ``vocab_size`` and the largest id ``max_id``; every split carries the last two
as attributes, so a trainer checks a model's vocabulary without reading the tokens. Both files are written to temporary files and renamed, the sidecar last, and a
cache is trusted only when its sidecar names its key and its size matches: a killed run
never leaves a half-written cache that a later run trusts.

Blocks: block ``i`` is ``tokens[i T : i T + T + 1]`` (``T`` = ``block_size``); inputs are
its first ``T`` tokens and targets its last ``T``, so every token after the first is a
target exactly once. The blocks are dealt to train / validation / test by a seeded
permutation, and each split batches like ``ArrayDataset`` (order by ``(seed, epoch)``,
resume by ``start_step``, per-host shards, ``"mask"``), reading only its batch's blocks.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bigtune_jax.validation import check_int
from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.data.splits import split_indices

SPLITS = ("train", "validation", "test")
# What a document becomes in the cache; part of its key, so a change rebuilds old caches.
FORMAT = "tokenizer.encode(text) with the post-processor's special tokens, then EOS"


def corpus_files(paths, suffixes: Sequence[str] | None = (".txt",),
                 pattern: str = "*") -> list[Path]:
  """The text files of ``paths`` (a file, a folder searched recursively, or a list).

  In a folder, the files that ``Path.rglob(pattern)`` finds (e.g. ``"*"``, ``"books/*"``)
  whose suffix is one of ``suffixes`` (None: any), in sorted order; a file named directly
  is always taken.
  """
  items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not items:
    raise ValueError("paths must name at least one corpus file or folder, got an empty list")
  files = []
  for item in map(Path, items):
    if item.is_dir():
      found = sorted(p for p in item.rglob(pattern) if p.is_file() and (
          suffixes is None or p.suffix in suffixes))
      if not found:
        wanted = "any" if suffixes is None else "/".join(suffixes)
        raise ValueError(f"corpus folder {item} holds no file matching {pattern!r} with "
                         f"suffix {wanted}")
      files += found
    elif item.is_file():
      files.append(item)
    else:
      raise FileNotFoundError(f"corpus path {item} does not exist")
  return files


def _sources(files: list[Path]) -> list[list]:
  """What the cache key covers of each file: its path, size and modification time."""
  return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _write_atomically(path: Path, write) -> None:
  """``write(file)`` into a temporary file beside ``path``, then rename it into place."""
  with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as out:
    try:
      write(out)
    except BaseException:
      out.close()
      os.unlink(out.name)
      raise
  os.replace(out.name, path)


def _cached(data: Path, meta: Path, key: str) -> dict | None:
  """The sidecar of a complete cache for ``key``, or None (missing, partial or stale)."""
  try:
    info = json.loads(meta.read_text())
    complete = (info["key"] == key and isinstance(info["max_id"], int) and data.stat().st_size
                == info["tokens"] * np.dtype(info["dtype"]).itemsize)
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return info if complete else None


def tokenize_corpus(paths, tokenizer, cache_dir: str | os.PathLike, *,
                    suffixes: Sequence[str] | None = (".txt",),
                    pattern: str = "*") -> np.ndarray:
  """The corpus's token ids as a read-only ``np.memmap``, built once per key.

  Each file is one document: ``tokenizer.encode(text)`` (the post-processor's special
  tokens included), then ``tokenizer.eos_id`` when the tokenizer has one (required for
  more than one file) and the document does not already end with it. The sidecar
  ``tokens-<key>.json`` records the tokenizer's fingerprint and ``vocab_size``, each
  file's path, size and modification time, the dtype, the token count and the largest id
  (``max_id``); it is written after the tokens, so a cache without a matching sidecar is
  rebuilt.
  """
  return _tokenize(paths, tokenizer, cache_dir, suffixes, pattern)[0]


def _tokenize(paths, tokenizer, cache_dir, suffixes, pattern) -> tuple[np.ndarray, dict]:
  """``tokenize_corpus``'s memmap and its sidecar."""
  files = corpus_files(paths, suffixes, pattern)
  if len(files) > 1:
    tokenizer.require_eos(f"separating the {len(files)} documents of the corpus {paths}")
  dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
  sources = _sources(files)
  key = hashlib.sha256(json.dumps([FORMAT, tokenizer.fingerprint, sources]).encode()
                       ).hexdigest()[:24]
  cache_dir = Path(cache_dir)
  data, meta = cache_dir / f"tokens-{key}.bin", cache_dir / f"tokens-{key}.json"
  info = _cached(data, meta, key)
  if info is None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    counts = {"tokens": 0, "text": 0, "max_id": -1}

    def write_tokens(out):
      for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        ids = tokenizer.encode(text)
        counts["text"] += len(text)
        if tokenizer.eos_id is not None and (not ids or ids[-1] != tokenizer.eos_id):
          ids.append(tokenizer.eos_id)
        out.write(np.asarray(ids, dtype).tobytes())
        counts["tokens"] += len(ids)
        counts["max_id"] = max(counts["max_id"], max(ids, default=-1))
      if counts["text"] == 0:
        raise ValueError(f"the corpus {', '.join(map(str, files[:3]))} is empty: no tokens")

    _write_atomically(data, write_tokens)
    info = {"key": key, "format": FORMAT, "tokenizer": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size, "files": sources, "dtype": dtype.name,
            "tokens": counts["tokens"], "max_id": counts["max_id"]}
    _write_atomically(meta, lambda out: out.write(json.dumps(info, indent=1).encode()))
  return np.memmap(data, dtype=info["dtype"], mode="r", shape=(info["tokens"],)), info


class TokenBlocks(ArrayDataset):
  """Blocks of ``block_size + 1`` tokens, by block number; batches like ``ArrayDataset``.

  Batches are ``{"inputs": (b, T), "targets": (b, T), "mask": (b,)}`` int32 (what
  ``train.language_model_loss`` reads); only the rows of a batch are read from the tokens.

  What can be in them, readable without touching the tokens: ``max_id``, the largest id
  in ``tokens`` (the whole corpus, so a bound for this split; computed here when not
  given), and ``vocab_size``, the vocabulary of the tokenizer that made them (None when
  unknown). A model with ``config.vocab_size <= max_id`` cannot read them.
  """

  def __init__(self, tokens: np.ndarray, block_size: int, block_ids: np.ndarray, *,
               vocab_size: int | None = None, max_id: int | None = None):
    super().__init__({"block": np.asarray(block_ids, np.int64)})
    self.tokens = tokens
    self.block_size = block_size
    self.vocab_size = vocab_size
    self.max_id = int(np.max(tokens)) if max_id is None else int(max_id)
    self._windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)[
        ::block_size]  # (num_blocks, T + 1), a view

  def materialize(self) -> ArrayDataset:
    """The blocks as in-memory ``inputs`` / ``targets`` arrays ``(blocks, T)`` int32 (to
    hold a small corpus on the device, as population training does)."""
    rows = self._windows[self.arrays["block"]].astype(np.int32)
    return ArrayDataset({"inputs": rows[:, :-1], "targets": rows[:, 1:]})

  def __repr__(self) -> str:
    return f"TokenBlocks({self.num_examples} blocks of {self.block_size} + 1 tokens)"

  def _generate(self, order, batch_size, local, index, start_step, steps):
    for batch in super()._generate(order, batch_size, local, index, start_step, steps):
      rows = self._windows[batch.pop("block")].astype(np.int32)  # (b, T + 1)
      yield {"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": batch["mask"]}


def load_token_dataset(paths, tokenizer, *, block_size: int, cache_dir: str | os.PathLike,
                       validation_fraction: float = 0.05, test_fraction: float = 0.05,
                       seed: int = 0, suffixes: Sequence[str] | None = (".txt",),
                       pattern: str = "*") -> dict[str, TokenBlocks]:
  """``{"train", "validation", "test"}`` splits of a corpus's token blocks.

  Fractions of the blocks (a split of fraction 0 is left out of the dict); each split
  needs at least one block and carries the corpus's ``vocab_size`` and ``max_id`` (see
  ``TokenBlocks``). ``suffixes`` and ``pattern`` select a folder's files (see
  ``corpus_files``).
  """
  block_size = check_int("block_size", block_size, 1)
  seed = check_int("seed", seed, 0)
  fractions = {"validation": validation_fraction, "test": test_fraction}
  for name, value in fractions.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
      raise ValueError(f"{name}_fraction must be a number in [0, 1), got {value!r}")
  if validation_fraction + test_fraction >= 1:
    raise ValueError(f"validation_fraction + test_fraction must be < 1, got "
                     f"{validation_fraction + test_fraction}")
  tokens, info = _tokenize(paths, tokenizer, cache_dir, suffixes, pattern)
  num_blocks = (len(tokens) - 1) // block_size
  if num_blocks < 1:
    raise ValueError(f"the corpus {paths} has {len(tokens)} tokens, fewer than one block "
                     f"of block_size + 1 = {block_size + 1}; use a smaller block_size")
  names = ["train"] + [n for n in ("validation", "test") if fractions[n] > 0]
  shares = [1 - validation_fraction - test_fraction] + [fractions[n] for n in names[1:]]
  parts = split_indices(num_blocks, shares, seed=seed)
  for name, part in zip(names, parts):
    if len(part) == 0:
      raise ValueError(f"the {name} split has no block: {num_blocks} blocks of "
                       f"{block_size} tokens; use a smaller block_size or more text")
  return {name: TokenBlocks(tokens, block_size, part, vocab_size=info["vocab_size"],
                           max_id=info["max_id"]) for name, part in zip(names, parts)}
