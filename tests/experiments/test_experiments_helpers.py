"""The helpers every experiment shares (``bt.train.png_figure``, ``searching.make_searcher``),
and the rule that experiments import only the shared modules."""

import ast
import os
import pathlib
import sys

import matplotlib.image
import pytest

from bigtune_jax import tune
from bigtune_jax.train.metrics import png_figure
from experiments import finetune_lm
from experiments import searching

SHARED = {"cli", "searching", "report", "tasks", "classification"}


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


def test_finetune_lm_keeps_its_study_in_study_log_and_resumes_it(tmp_path):
  """finetune_lm gets its searcher from the one factory: ``WORKDIR/study.log``, as tune and
  tune_lm; a second searcher on the same workdir holds the first one's trial."""
  pytest.importorskip("optuna")
  config = dict(finetune_lm.PRESETS["tiny"], seed=int.from_bytes(os.urandom(2), "little"))
  first = finetune_lm.make_searcher(config, str(tmp_path))
  trial, = first.ask(1)
  first.tell(trial, 1.5)
  assert sorted(os.listdir(tmp_path)) == ["study.log"]
  again = finetune_lm.make_searcher(config, str(tmp_path))
  assert [r.value for r in again.results] == [1.5]


def test_experiments_import_only_the_shared_modules():
  """Every script is forkable: it imports the shared modules (``cli``, ``searching``,
  ``report``, ``tasks``, ``classification``), never another experiment."""
  folder = pathlib.Path(__file__).resolve().parents[2] / "experiments"
  found = {}
  for path in sorted(folder.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == "experiments":
        found[path.stem] = found.get(path.stem, set()) | {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
        found[path.stem] = found.get(path.stem, set()) | {node.module.split(".")[1]}
  assert len(found) > 15  # the scripts were read
  assert {name: sorted(names - SHARED) for name, names in found.items() if names - SHARED} == {}
