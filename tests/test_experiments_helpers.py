"""The helpers every experiment shares: ``bt.train.png_figure`` and ``searching.make_searcher``."""

import os
import sys

import matplotlib.image
import pytest

from bigtune_jax import tune
from bigtune_jax.train.metrics import png_figure
from experiments import searching


def test_figure_writes_one_png_and_nothing_on_an_error(tmp_path):
  path = str(tmp_path / "curve.png")
  with png_figure(path, size=(4, 3), dpi=50) as fig:
    fig.subplots().plot([0, 1], [1, 0])
  assert matplotlib.image.imread(path).shape[:2] == (150, 200)  # inches x dpi
  before = os.path.getmtime(path), os.path.getsize(path)
  with pytest.raises(RuntimeError):
    with png_figure(path) as fig:
      raise RuntimeError("drawing failed")
  assert (os.path.getmtime(path), os.path.getsize(path)) == before  # the old plot stays
  assert os.listdir(tmp_path) == ["curve.png"]  # no temporary file left behind


SPACE = tune.Space({"learning_rate": tune.LogUniform(1e-3, 1e-1)})
CONFIG = {"seed": 0, "sampler": "tpe", "pruner": "median"}


def test_make_searcher_journals_an_optuna_study_in_the_workdir(tmp_path):
  pytest.importorskip("optuna")
  searcher = searching.make_searcher(SPACE, CONFIG, str(tmp_path / "run"), study_name="t",
                                  mode="min")
  assert isinstance(searcher, tune.OptunaSearch) and searcher.mode == "min"
  trial, = searcher.ask(1)
  searcher.tell(trial, 1.0)
  assert (tmp_path / "run" / "study.log").exists()


def test_make_searcher_without_optuna_is_seeded_random_search(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
  first, second = (searching.make_searcher(SPACE, CONFIG, str(tmp_path), study_name="t")
                   for _ in range(2))
  assert isinstance(first, tune.RandomSearch) and first.mode == "max"
  assert [t.params for t in first.ask(3)] == [t.params for t in second.ask(3)]
