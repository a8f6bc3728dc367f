"""Datasets and the batching pipeline: ``load_dataset(name, data_dir)`` -> splits of
``ArrayDataset``; ``dataset.batches(batch_size, seed=..., epoch=...)`` -> dicts of numpy arrays.

Embedded defaults need no network: scikit-learn's digits, the linear-regression toy of seed
002, and Python's own help text for byte-level language models. MNIST, Fashion-MNIST,
CIFAR-10 and text files come from ``--data-dir``. Tokenizers (a checkpoint's
``tokenizer.json``, a BPE trained on your text, or bytes) and cached, packed token datasets
serve pretrained language models. This package imports neither
``bigtune_jax.models`` nor ``bigtune_jax.train``.
"""

from bigtune_jax.data.cifar import load_cifar10
from bigtune_jax.data.cifar import read_cifar10_binary
from bigtune_jax.data.cifar import read_cifar10_pickle
from bigtune_jax.data.datasets import DATASETS
from bigtune_jax.data.datasets import load_dataset
from bigtune_jax.data.datasets import text_splits
from bigtune_jax.data.digits import load_digits
from bigtune_jax.data.digits import resize_bilinear
from bigtune_jax.data.idx import load_mnist
from bigtune_jax.data.idx import read_idx
from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.data.pipeline import epoch_order
from bigtune_jax.data.pipeline import steps_per_epoch
from bigtune_jax.data.splits import split_arrays
from bigtune_jax.data.splits import split_indices
from bigtune_jax.data.text import VOCAB_SIZE
from bigtune_jax.data.text import lm_windows
from bigtune_jax.data.text import read_text
from bigtune_jax.data.text import split_tokens
from bigtune_jax.data.text import stdlib_corpus
from bigtune_jax.data.tokenizer import ByteTokenizer
from bigtune_jax.data.tokenizer import Tokenizer
from bigtune_jax.data.tokenizer import load_tokenizer
from bigtune_jax.data.tokenizer import train_bpe
from bigtune_jax.data.tokens import TokenBlocks
from bigtune_jax.data.tokens import load_token_dataset
from bigtune_jax.data.tokens import tokenize_corpus
from bigtune_jax.data.toy import linear_regression_toy

__all__ = (
    "DATASETS",
    "VOCAB_SIZE",
    "ArrayDataset",
    "ByteTokenizer",
    "TokenBlocks",
    "Tokenizer",
    "epoch_order",
    "linear_regression_toy",
    "lm_windows",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_token_dataset",
    "load_tokenizer",
    "read_cifar10_binary",
    "read_cifar10_pickle",
    "read_idx",
    "read_text",
    "resize_bilinear",
    "split_arrays",
    "split_indices",
    "split_tokens",
    "stdlib_corpus",
    "steps_per_epoch",
    "text_splits",
    "tokenize_corpus",
    "train_bpe",
)
