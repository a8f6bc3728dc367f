"""Run by tests/train/test_workdir_lock.py in a subprocess: a short fit on a workdir that kills
itself with SIGKILL at a chosen point, or runs to the end.

  python -m tests.resume_worker WORKDIR MODE      # MODE: none | after_first_row |
                                                  #       during_first_save | hold
"""

import os
import signal
import sys
import time

import numpy as np
import optax

from bigtune_jax import data, models, train
from bigtune_jax.train import metrics as metrics_lib


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def main(workdir: str, mode: str) -> None:
  if mode == "after_first_row":  # a metrics row is on disk, no checkpoint yet
    append = metrics_lib.MetricsLog.append
    def append_then_die(self, step, **values):
      append(self, step, **values)
      _die()
    metrics_lib.MetricsLog.append = append_then_die
  elif mode == "during_first_save":  # the step's *.orbax-checkpoint-tmp* exists, uncommitted
    # Killed at the commit itself: Orbax has written the temporary directory and is about
    # to rename it. (Killing when `save` returns raced Orbax's background directory
    # creation on a loaded machine: sometimes there was no temporary directory yet.)
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    async def die_at_commit(self, *args, **kwargs):
      del self, args, kwargs
      _die()
    atomicity.AtomicRenameTemporaryPath.finalize = die_at_commit
  rng = np.random.default_rng(0)
  x = rng.standard_normal((256, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  model = models.MLP(hidden=(16,), num_classes=2)
  params = train.init_params(model, x[:1])
  state = train.create_train_state(model, params, optax.sgd(0.1))
  dataset = data.ArrayDataset({"image": x, "label": y})
  if mode == "hold":
    with train.WorkdirLock(workdir):
      print("held", flush=True)
      time.sleep(120)
  train.fit(state, train.classification_loss(model), dataset, dataset, workdir=workdir,
            config=train.FitConfig(steps=40, batch_size=16, eval_every=10,
                                   checkpoint_every_evals=2, progress=False))


if __name__ == "__main__":
  main(*sys.argv[1:])
