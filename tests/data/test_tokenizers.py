"""data.tokenizer against transformers' own tokenizer on the same tokenizer.json, and the
cached, packed token dataset: deterministic, covering, resumable, refused when bad."""

import json
import os

import numpy as np
import pytest

from bigtune_jax import data

transformers = pytest.importorskip("transformers")

STRINGS_EXTRA = ["", " ", "  two  spaces\t\ttabs\n\nnewlines", "naïve café — déjà vu",
                 "日本語のテキスト", "中文文本，标点。", "emoji 🙂🚀 and ZWJ 👩‍💻", "Ελληνικά",
                 "русский текст", "mixed: λx. x + 1 ≤ ∞", "\u00a0non-breaking", "x" * 300]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  text = data.stdlib_corpus().tobytes().decode("utf-8")
  documents = text.split("\n\n")
  tokenizer = data.train_bpe(documents[:2000], vocab_size=600)
  directory = tmp_path_factory.mktemp("tok")
  tokenizer.save(directory)
  return tokenizer, directory, documents


def test_ids_equal_transformers_auto_tokenizer(bpe):
  tokenizer, directory, documents = bpe
  reference = transformers.AutoTokenizer.from_pretrained(str(directory))
  loaded = data.load_tokenizer(directory)
  rng = np.random.default_rng(0)
  strings = [documents[i][:200] for i in rng.choice(len(documents), 200, replace=False)]
  strings += STRINGS_EXTRA
  for s in strings:
    expected = reference.encode(s, add_special_tokens=False)
    assert loaded.encode(s) == expected == tokenizer.encode(s), s
    assert loaded.decode(expected) == s  # byte-level BPE round-trips any text
  assert loaded.encode_batch(strings[:5]) == [reference.encode(s, add_special_tokens=False)
                                              for s in strings[:5]]
  assert loaded.vocab_size == 600 == len(reference)
  assert loaded.eos_id == reference.convert_tokens_to_ids("<|endoftext|>") == tokenizer.eos_id
  assert loaded.fingerprint == tokenizer.fingerprint


def test_eos_comes_from_the_checkpoint_files(bpe, tmp_path):
  tokenizer, directory, _ = bpe
  (tmp_path / "tokenizer.json").write_bytes((directory / "tokenizer.json").read_bytes())
  (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 7}))
  assert data.load_tokenizer(tmp_path).eos_id == 7
  (tmp_path / "config.json").unlink()
  assert data.load_tokenizer(tmp_path / "tokenizer.json").eos_id == tokenizer.eos_id
  assert data.load_tokenizer(tmp_path, eos_token="the").eos_id == tokenizer.token_id("the")
  with pytest.raises(ValueError, match="eos_token '<eos>' is not in the vocabulary of .*json"):
    data.load_tokenizer(tmp_path, eos_token="<eos>")
  no_eos = data.train_bpe(["plain text"] * 5, vocab_size=270, special_tokens=("<pad>",))
  assert no_eos.eos_id is None and no_eos.token_id("<pad>") == 0
  no_eos.tokenizer.save(str(tmp_path / "tokenizer.json"))
  loaded = data.load_tokenizer(tmp_path)
  assert loaded.eos_id is None
  with pytest.raises(ValueError, match="has no EOS token, which packing needs; .*eos_token="):
    loaded.require_eos("packing")


def test_bad_tokenizer_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer at .*tokenizer.json"):
    data.load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(ValueError, match="tokenizer.json is not a Hugging Face tokenizer file"):
    data.load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_bytes(os.urandom(64))
  with pytest.raises(ValueError, match="is not a Hugging Face tokenizer file"):
    data.load_tokenizer(tmp_path / "tokenizer.json")
  with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 257"):
    data.train_bpe(["abc"], vocab_size=100)


@pytest.fixture
def corpus(tmp_path):
  folder = tmp_path / "corpus"
  (folder / "sub").mkdir(parents=True)
  text = data.stdlib_corpus().tobytes().decode("utf-8")
  (folder / "a.txt").write_text(text[:20000])
  (folder / "sub" / "b.txt").write_text(text[20000:36000])
  (folder / "ignored.md").write_text("not text of the corpus")
  return folder


def test_tokens_have_eos_after_each_document_and_are_cached(bpe, corpus, tmp_path):
  tokenizer, _, _ = bpe
  tokens = data.tokenize_corpus(corpus, tokenizer, tmp_path / "cache")
  first = tokenizer.encode((corpus / "a.txt").read_text())
  second = tokenizer.encode((corpus / "sub" / "b.txt").read_text())
  np.testing.assert_array_equal(tokens, first + [tokenizer.eos_id] + second + [tokenizer.eos_id])
  assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
  built = sorted(p.name for p in (tmp_path / "cache").iterdir())
  mtime = (tmp_path / "cache" / built[0]).stat().st_mtime_ns
  again = data.tokenize_corpus(corpus, tokenizer, tmp_path / "cache")  # reused, not rebuilt
  assert (tmp_path / "cache" / built[0]).stat().st_mtime_ns == mtime
  np.testing.assert_array_equal(again, tokens)
  (corpus / "a.txt").write_text("changed text")  # a changed file rebuilds under a new key
  changed = data.tokenize_corpus(corpus, tokenizer, tmp_path / "cache")
  assert len(changed) < len(tokens) and len(list((tmp_path / "cache").glob("*.bin"))) == 2
  assert not list((tmp_path / "cache").glob("*.tmp"))


def test_blocks_are_deterministic_and_cover_every_block_once(bpe, corpus, tmp_path):
  tokenizer, _, _ = bpe
  splits = data.load_token_dataset(corpus, tokenizer, block_size=32, cache_dir=tmp_path / "c",
                                   validation_fraction=0.1, test_fraction=0.1, seed=3)
  tokens = data.tokenize_corpus(corpus, tokenizer, tmp_path / "c")
  num_blocks = (len(tokens) - 1) // 32
  ids = [splits[n]["block"] for n in ("train", "validation", "test")]
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(num_blocks))
  train = splits["train"]
  seen = []
  for batch in train.batches(8, seed=1, epoch=2, remainder="pad", shuffle=True):
    for inputs, targets, real in zip(batch["inputs"], batch["targets"], batch["mask"]):
      if real:
        start = np.flatnonzero((tokens[:-32] == inputs[0]))  # locate the block by content
        block = next(s for s in start if s % 32 == 0 and (tokens[s:s + 32] == inputs).all())
        np.testing.assert_array_equal(targets, tokens[block + 1:block + 33])
        seen.append(block // 32)
  assert sorted(seen) == sorted(train["block"].tolist())  # every train block once
  one = [b["inputs"] for b in train.batches(8, seed=1, epoch=2)]
  two = [b["inputs"] for b in train.batches(8, seed=1, epoch=2)]
  other = [b["inputs"] for b in train.batches(8, seed=1, epoch=3)]
  np.testing.assert_array_equal(np.stack(one), np.stack(two))
  assert not np.array_equal(np.stack(one), np.stack(other))
  resumed = [b["inputs"] for b in train.batches(8, seed=1, epoch=2, start_step=3)]
  np.testing.assert_array_equal(np.stack(resumed), np.stack(one[3:]))


def test_fit_trains_a_gpt_on_a_token_dataset(bpe, corpus, tmp_path):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from bigtune_jax import models, train  # pylint: disable=import-outside-toplevel
  tokenizer, _, _ = bpe
  splits = data.load_token_dataset(corpus, tokenizer, block_size=16, cache_dir=tmp_path / "c")
  model = models.GPT(models.GPTConfig.tiny(vocab_size=tokenizer.vocab_size))
  params = train.init_params(model, jnp.zeros((1, 16), jnp.int32))
  state = train.create_train_state(model, params, optax.adam(3e-3))
  result = train.fit(state, train.language_model_loss(model), splits["train"],
                     splits["validation"], workdir=tmp_path / "run",
                     config=train.FitConfig(steps=30, batch_size=8, eval_every=15,
                                            progress=False))
  losses = [row["val_loss"] for row in result.history]
  assert len(losses) == 2 and losses[-1] < losses[0] < np.log(tokenizer.vocab_size) + 0.5
  assert np.isfinite(losses).all()
  resumed = train.fit(state, train.language_model_loss(model), splits["train"],
                      splits["validation"], workdir=tmp_path / "run",
                      config=train.FitConfig(steps=45, batch_size=8, eval_every=15,
                                             progress=False))
  assert resumed.resumed_from == 30 and [r["step"] for r in resumed.history] == [15, 30, 45]
  assert np.isfinite(resumed.history[-1]["val_loss"])


def test_a_partial_or_stale_cache_is_rebuilt(bpe, corpus, tmp_path):
  tokenizer, _, _ = bpe
  tokens = np.array(data.tokenize_corpus(corpus, tokenizer, tmp_path / "c"))
  (sidecar,) = (tmp_path / "c").glob("*.json")
  info = json.loads(sidecar.read_text())
  assert info["tokens"] == len(tokens) and info["tokenizer"] == tokenizer.fingerprint
  assert [f[0] for f in info["files"]] == [str((corpus / "a.txt").resolve()),
                                           str((corpus / "sub" / "b.txt").resolve())]
  (bin_file,) = (tmp_path / "c").glob("*.bin")
  bin_file.write_bytes(bin_file.read_bytes()[:100])  # a killed copy: truncated tokens
  np.testing.assert_array_equal(data.tokenize_corpus(corpus, tokenizer, tmp_path / "c"), tokens)
  sidecar.write_text('{"key": ')  # a half-written sidecar
  np.testing.assert_array_equal(data.tokenize_corpus(corpus, tokenizer, tmp_path / "c"), tokens)
  other = data.train_bpe(["some other text"] * 10, vocab_size=300)  # another tokenizer
  data.tokenize_corpus(corpus, other, tmp_path / "c")
  assert len(list((tmp_path / "c").glob("*.bin"))) == 2


def test_folder_filters_and_lists(bpe, corpus, tmp_path):
  tokenizer = data.ByteTokenizer()
  only_b = data.tokenize_corpus(corpus, tokenizer, tmp_path / "c", pattern="sub/*")
  assert tokenizer.decode(only_b) == (corpus / "sub" / "b.txt").read_text()
  md = data.tokenize_corpus(corpus, tokenizer, tmp_path / "c", suffixes=(".md",))
  assert tokenizer.decode(md) == "not text of the corpus"
  with pytest.raises(ValueError, match="has no EOS token, which separating the 2 documents"):
    data.tokenize_corpus([corpus / "sub", corpus / "ignored.md"], tokenizer, tmp_path / "c")
  tokenizer = data.ByteTokenizer(eos=True)
  both = data.tokenize_corpus([corpus / "sub", corpus / "ignored.md"], tokenizer, tmp_path / "c")
  assert both.dtype == np.uint16 and both[-1] == 256 == tokenizer.eos_id
  assert tokenizer.decode(both) == ((corpus / "sub" / "b.txt").read_text()
                                    + "not text of the corpus")  # EOS decodes to nothing


@pytest.mark.parametrize("kwargs, error, match", [
    ({"paths": "missing.txt"}, FileNotFoundError, "corpus path .*missing.txt does not exist"),
    ({"paths": []}, ValueError, "paths must name at least one corpus file or folder"),
    ({"block_size": 0}, ValueError, "block_size must be an integer >= 1"),
    ({"validation_fraction": 1.5}, ValueError, r"validation_fraction must be a number in \[0, 1\)"),
    ({"block_size": 100000}, ValueError, "corpus .*corpus has .* fewer than one block"),
    ({"test_fraction": 0.999}, ValueError, "validation_fraction \\+ test_fraction must be < 1"),
    ({"validation_fraction": 1e-6}, ValueError, "the validation split has no block"),
])
def test_bad_corpora_and_settings_are_refused(bpe, corpus, tmp_path, kwargs, error, match):
  tokenizer, _, _ = bpe
  arguments = {"paths": corpus, "block_size": 16, "cache_dir": tmp_path / "c", **kwargs}
  if isinstance(arguments["paths"], str):
    arguments["paths"] = tmp_path / arguments["paths"]
  with pytest.raises(error, match=match):
    data.load_token_dataset(tokenizer=tokenizer, **arguments)


def test_empty_corpus_is_refused(bpe, tmp_path):
  tokenizer, _, _ = bpe
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="corpus folder .*empty holds no file"):
    data.tokenize_corpus(tmp_path / "empty", data.ByteTokenizer(), tmp_path / "c")
  (tmp_path / "empty" / "a.txt").write_text("")
  with pytest.raises(ValueError, match="is empty: no tokens"):
    data.tokenize_corpus(tmp_path / "empty", data.ByteTokenizer(), tmp_path / "c")
  with pytest.raises(ValueError, match="is empty: no tokens"):  # EOS alone is no text
    data.tokenize_corpus(tmp_path / "empty", tokenizer, tmp_path / "c")
  assert not list((tmp_path / "c").glob("*"))  # nothing half-written is left
