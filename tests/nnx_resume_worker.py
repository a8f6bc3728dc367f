"""Run by tests/train/test_nnx_engine.py in a subprocess: a short ``fit`` of an NNX MLP (with
dropout) on a workdir, killed with SIGKILL right after its third metrics row is written
(the checkpoint of the second committed, the third's not begun), or run to the end.

  python -m tests.nnx_resume_worker WORKDIR MODE      # MODE: none | kill
"""

import os
import signal
import sys

from bigtune_jax.train import checkpoint as checkpoint_lib
from bigtune_jax.train import metrics as metrics_lib
from tests import nnx_runs


def main(workdir: str, mode: str) -> None:
  if mode == "kill":
    save, append = checkpoint_lib.Checkpointer.save, metrics_lib.MetricsLog.append
    def save_and_commit(self, *args, **kwargs):
      saved = save(self, *args, **kwargs)
      self.wait()
      return saved
    def append_then_die(self, step, **values):
      append(self, step, **values)
      if step == 30:
        os.kill(os.getpid(), signal.SIGKILL)
    checkpoint_lib.Checkpointer.save = save_and_commit
    metrics_lib.MetricsLog.append = append_then_die
  nnx_runs.fit_mlp(workdir)


if __name__ == "__main__":
  main(*sys.argv[1:])
