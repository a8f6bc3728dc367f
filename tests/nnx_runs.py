"""The NNX runs the NNX tests and their subprocess worker share."""

from flax import nnx
import numpy as np
import optax

from bigtune_jax import data, train
from bigtune_jax.models import nnx as nnx_models

FEATURES, CLASSES = 8, 3


def dataset(seed: int = 0, rows: int = 128) -> data.ArrayDataset:
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
  return data.ArrayDataset({"image": x, "label": rng.integers(0, CLASSES, rows).astype(np.int32)})


def mlp(seed: int = 0, dropout_rate: float = 0.25) -> nnx_models.MLP:
  return nnx_models.MLP(FEATURES, hidden=(16,), num_classes=CLASSES, dropout_rate=dropout_rate,
                        rngs=nnx.Rngs(seed))


def fit_mlp(workdir: str | None) -> train.FitResult:
  """40 steps of Adam on an NNX MLP with dropout, evaluated and checkpointed every 10."""
  model = mlp()
  state = train.create_train_state(model, None, optax.adam(1e-2), seed=1)
  return train.fit(state, train.classification_loss(model), dataset(), dataset(1),
                   workdir=workdir, config=train.FitConfig(
                       steps=40, batch_size=16, eval_every=10, progress=False))
