"""Tokenizers: a checkpoint's ``tokenizer.json``, a byte-level BPE trained on your own text,
or raw bytes (the zero-dependency default).

Pretrained language models (seed 001 §4.2, seed 003 §4.1) read token ids of their own
vocabulary; this module reads it through Hugging Face's ``tokenizers`` package, the
library that writes ``tokenizer.json``, so ids equal ``transformers.AutoTokenizer``'s.
``train_bpe`` learns a byte-level BPE (Sennrich et al., "Neural Machine Translation of
Rare Words with Subword Units", 2016; GPT-2's byte-level variant, Radford et al. 2019):
every string round-trips, whatever its script.

All three share one interface: ``encode(text, add_special_tokens=True) -> list[int]``,
``encode_batch``, ``decode(ids)``, ``vocab_size``, ``eos_id`` (None when the vocabulary has
none; ``require_eos(purpose)`` then raises a clear error) and ``fingerprint`` (a hash of the
vocabulary and rules, which keys token caches).

Special tokens follow transformers: with ``add_special_tokens=True`` (its default) the
``tokenizer.json``'s post-processor adds what it adds (a Llama-style ``TemplateProcessing``
puts BOS first; GPT-2's ``ByteLevel`` adds nothing), so ``encode(text)`` equals
``transformers.AutoTokenizer.from_pretrained(path)(text)["input_ids"]``; ``False`` gives the
text's tokens alone. ``ByteTokenizer`` and ``train_bpe``'s tokenizers have no post-processor.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

COMMON_EOS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>")


class ByteTokenizer:
  """UTF-8 bytes as tokens 0..255 (``data.text``'s corpus); with ``eos=True`` id 256 is an
  EOS token (vocabulary 257) that ``decode`` drops."""

  def __init__(self, eos: bool = False):
    self.eos_id = 256 if eos else None
    self.vocab_size = 257 if eos else 256
    self.fingerprint = "utf-8 bytes" + (" + eos 256" if eos else "")

  def __repr__(self) -> str:
    return f"ByteTokenizer(eos={self.eos_id is not None})"

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    _check_flag(add_special_tokens)  # bytes have no special tokens to add
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True
                   ) -> list[list[int]]:
    return [self.encode(t, add_special_tokens) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

  def require_eos(self, purpose: str) -> int:
    return _require_eos(self, purpose, "use ByteTokenizer(eos=True)")


def _check_flag(add_special_tokens) -> bool:
  if not isinstance(add_special_tokens, bool):
    raise ValueError(f"add_special_tokens must be a bool, got {add_special_tokens!r}")
  return add_special_tokens


def _require_eos(tokenizer, purpose: str, remedy: str) -> int:
  if tokenizer.eos_id is None:
    raise ValueError(f"{tokenizer!r} has no EOS token, which {purpose} needs; {remedy}")
  return tokenizer.eos_id


class Tokenizer:
  """A ``tokenizers.Tokenizer`` with the EOS id training needs."""

  def __init__(self, tokenizer, eos_id: int | None = None):
    self.tokenizer = tokenizer
    self.eos_id = eos_id
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.fingerprint = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """``text``'s ids; ``add_special_tokens`` lets the post-processor add its tokens (BOS)."""
    return self.tokenizer.encode(text, add_special_tokens=_check_flag(add_special_tokens)).ids

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True
                   ) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(
        list(texts), add_special_tokens=_check_flag(add_special_tokens))]

  def decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def require_eos(self, purpose: str) -> int:
    """``eos_id``, or a ValueError saying that ``purpose`` needs one."""
    return _require_eos(self, purpose, "none of the checkpoint's tokenizer_config.json, "
                        "special_tokens_map.json, generation_config.json or config.json names "
                        f"one and none of {COMMON_EOS} is in the vocabulary: pass "
                        "load_tokenizer(path, eos_token=...)")

  def token_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def save(self, directory: str | os.PathLike) -> Path:
    """Writes ``tokenizer.json`` (and the EOS token in ``tokenizer_config.json``), which
    ``transformers.AutoTokenizer.from_pretrained(directory)`` loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self.tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if self.eos_id is not None:
      config["eos_token"] = self.tokenizer.id_to_token(self.eos_id)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory / "tokenizer.json"


def _read_json(path: Path) -> dict:
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return value if isinstance(value, dict) else {}


def _eos_from_files(directory: Path, tokenizer) -> int | None:
  """EOS as the checkpoint declares it: tokenizer_config / special_tokens_map / configs."""
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    token = _read_json(directory / name).get("eos_token")
    if isinstance(token, dict):
      token = token.get("content")
    if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
      return tokenizer.token_to_id(token)
  for name in ("generation_config.json", "config.json"):
    value = _read_json(directory / name).get("eos_token_id")
    value = value[0] if isinstance(value, list) and value else value
    if isinstance(value, int) and 0 <= value < tokenizer.get_vocab_size(True):
      return value
  return None


def load_tokenizer(path: str | os.PathLike, *, eos_token: str | None = None) -> Tokenizer:
  """A checkpoint directory's ``tokenizer.json`` (or the file itself) as a ``Tokenizer``.

  EOS is ``eos_token`` when given (it must be in the vocabulary), else read from the
  checkpoint's ``tokenizer_config.json``, ``special_tokens_map.json``,
  ``generation_config.json`` or ``config.json``, else the first of ``COMMON_EOS`` in the
  vocabulary, else None (``require_eos`` then raises).
  """
  import tokenizers  # pylint: disable=import-outside-toplevel
  path = Path(path)
  file = path / "tokenizer.json" if path.is_dir() else path
  if not file.is_file():
    raise FileNotFoundError(f"no tokenizer at {file}: expected a tokenizer.json file or a "
                            "checkpoint directory holding one")
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(file))
  except Exception as e:  # tokenizers raises its own Exception type on bad files
    raise ValueError(f"{file} is not a Hugging Face tokenizer file: {e}") from None
  if eos_token is not None:
    if tokenizer.token_to_id(eos_token) is None:
      raise ValueError(f"eos_token {eos_token!r} is not in the vocabulary of {file}")
    return Tokenizer(tokenizer, tokenizer.token_to_id(eos_token))
  eos = _eos_from_files(file.parent, tokenizer)
  if eos is None:
    eos = next((tokenizer.token_to_id(t) for t in COMMON_EOS
                if tokenizer.token_to_id(t) is not None), None)
  return Tokenizer(tokenizer, eos)


def train_bpe(texts: Iterable[str], vocab_size: int, *,
              special_tokens: Sequence[str] = ("<|endoftext|>",),
              min_frequency: int = 2) -> Tokenizer:
  """A byte-level BPE learned from ``texts`` (GPT-2's pre-tokenizer and decoder).

  ``vocab_size`` counts the 256 byte tokens, the merges and ``special_tokens`` (ids 0, 1, ...);
  the first special token of ``COMMON_EOS`` is the EOS (None if there is none), which
  ``save`` records in ``tokenizer_config.json``. Deterministic for the same texts.
  """
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E501 pylint: disable=import-outside-toplevel
  special_tokens = list(special_tokens)
  minimum = 256 + len(special_tokens)
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or (
      vocab_size < minimum):
    raise ValueError(f"vocab_size must be an integer >= {minimum} (256 bytes + "
                     f"{len(special_tokens)} special tokens), got {vocab_size!r}")
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=min_frequency,
                                special_tokens=special_tokens,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  eos = next((tokenizer.token_to_id(t) for t in special_tokens if t in COMMON_EOS), None)
  return Tokenizer(tokenizer, eos)
