"""Special tokens follow the tokenizer.json post-processor, as transformers' AutoTokenizer does
(a Llama-style BOS template, a GPT-2-style ByteLevel one without), and token datasets hold
what ``encode`` gives plus EOS, record their largest id, and rebuild caches of the old format."""

import hashlib
import json

import numpy as np
import pytest

from bigtune_jax import data
from bigtune_jax.data import tokens as tokens_lib

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402,E501 pylint: disable=wrong-import-position


def _texts(seed, count=60):
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(1, 7))) for _ in range(40)]
  return [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(count)]


def _llama_style(directory, texts, single="<s> $A"):
  """A sentencepiece-like BPE (metaspace, byte fallback) whose post-processor is ``single``.

  Loaded as ``PreTrainedTokenizerFast``: transformers 5's ``LlamaTokenizer`` class swaps the
  normalizer for its own pre-tokenizer (a difference in the text's tokens, not the
  special tokens this file tests).
  """
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
  tok.post_processor = processors.TemplateProcessing(
      single=single, pair=f"{single} $B:1", special_tokens=[("<s>", 1), ("</s>", 2)])
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
       "unk_token": "<unk>"}))
  return directory


def _gpt2_style(directory, texts):
  """A byte-level BPE with GPT-2's ByteLevel post-processor (it adds no token)."""
  tokenizer = data.train_bpe(texts, vocab_size=300)
  tokenizer.tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  tokenizer.save(directory)
  return directory


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_encode_equals_auto_tokenizer(tmp_path, style):
  texts = _texts(seed=np.random.default_rng().integers(1000))
  make = _llama_style if style == "llama" else _gpt2_style
  directory = make(tmp_path / style, texts)
  reference = transformers.AutoTokenizer.from_pretrained(str(directory))
  ours = data.load_tokenizer(directory)
  for text in texts[:20] + ["", " x"]:
    assert ours.encode(text) == reference(text)["input_ids"], text
    assert ours.encode(text, add_special_tokens=False) == reference(
        text, add_special_tokens=False)["input_ids"], text
  assert ours.encode_batch(texts[:5]) == reference(texts[:5])["input_ids"]
  assert ours.encode_batch(texts[:5], add_special_tokens=False) == reference(
      texts[:5], add_special_tokens=False)["input_ids"]
  bos = ours.token_id("<s>")
  assert (ours.encode(texts[0])[0] == bos) == (style == "llama")


def test_add_special_tokens_must_be_a_bool(tmp_path):
  tokenizer = data.load_tokenizer(_llama_style(tmp_path, _texts(1)))
  for tok in (tokenizer, data.ByteTokenizer()):
    with pytest.raises(ValueError, match="add_special_tokens must be a bool, got 'no'"):
      tok.encode("text", add_special_tokens="no")
    with pytest.raises(ValueError, match="add_special_tokens must be a bool, got 1"):
      tok.encode_batch(["text"], add_special_tokens=1)


def _corpus(folder, texts):
  folder.mkdir()
  for i, start in enumerate(range(0, len(texts), 20)):
    (folder / f"doc{i}.txt").write_text("\n".join(texts[start:start + 20]))
  return sorted(folder.glob("*.txt"))


def test_token_datasets_follow_the_post_processor_then_eos(tmp_path):
  texts = _texts(seed=np.random.default_rng().integers(1000))
  tokenizer = data.load_tokenizer(_llama_style(tmp_path / "tok", texts))
  bos, eos = tokenizer.token_id("<s>"), tokenizer.eos_id
  files = _corpus(tmp_path / "corpus", texts)
  tokens = data.tokenize_corpus(tmp_path / "corpus", tokenizer, tmp_path / "cache")
  expected = [i for f in files for i in [bos, *tokenizer.encode(f.read_text(),
                                                                add_special_tokens=False), eos]]
  np.testing.assert_array_equal(tokens, expected)
  # A template that already ends documents with EOS gets no second one.
  closing = data.load_tokenizer(_llama_style(tmp_path / "tok2", texts, single="<s> $A </s>"))
  again = data.tokenize_corpus(tmp_path / "corpus", closing, tmp_path / "cache")
  assert len(again) == len(tokens) and again[-1] == eos and again[-2] != eos


def test_splits_record_the_vocabulary_and_the_largest_id(tmp_path):
  texts = _texts(seed=np.random.default_rng().integers(1000))
  tokenizer = data.load_tokenizer(_llama_style(tmp_path / "tok", texts))
  _corpus(tmp_path / "corpus", texts)
  splits = data.load_token_dataset(tmp_path / "corpus", tokenizer, block_size=8,
                                   cache_dir=tmp_path / "cache", validation_fraction=0.2)
  tokens = data.tokenize_corpus(tmp_path / "corpus", tokenizer, tmp_path / "cache")
  for split in splits.values():
    assert split.vocab_size == tokenizer.vocab_size == 150
    assert split.max_id == int(tokens.max())
  (sidecar,) = (tmp_path / "cache").glob("*.json")
  info = json.loads(sidecar.read_text())
  assert (info["vocab_size"], info["max_id"]) == (150, int(tokens.max()))
  direct = data.TokenBlocks(np.asarray(tokens), 8, np.arange(3))  # computed when not given
  assert direct.max_id == int(tokens.max()) and direct.vocab_size is None


def test_a_cache_of_the_old_format_is_rebuilt(tmp_path):
  """The old key hashed the fingerprint and sources only; such a cache (documents without
  the post-processor's BOS) must not be served now that documents begin with it."""
  texts = _texts(seed=np.random.default_rng().integers(1000))
  tokenizer = data.load_tokenizer(_llama_style(tmp_path / "tok", texts))
  files = _corpus(tmp_path / "corpus", texts)
  sources = tokens_lib._sources(files)  # pylint: disable=protected-access
  old_key = hashlib.sha256(json.dumps([tokenizer.fingerprint, sources]).encode()).hexdigest()[:24]
  old = np.asarray([i for f in files for i in [*tokenizer.encode(
      f.read_text(), add_special_tokens=False), tokenizer.eos_id]], np.uint16)
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / f"tokens-{old_key}.bin").write_bytes(old.tobytes())
  (cache / f"tokens-{old_key}.json").write_text(json.dumps(
      {"key": old_key, "tokenizer": tokenizer.fingerprint, "files": sources,
       "dtype": "uint16", "tokens": len(old)}))
  tokens = data.tokenize_corpus(tmp_path / "corpus", tokenizer, cache)
  assert tokens[0] == tokenizer.token_id("<s>") and len(tokens) == len(old) + len(files)
  assert (cache / f"tokens-{old_key}.bin").read_bytes() == old.tobytes()  # left alone
