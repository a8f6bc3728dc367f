"""The public surface: ``import bigtune_jax as bt`` reaches every subpackage, lazily."""

import subprocess
import sys

import pytest

import bigtune_jax as bt

LAZY = ("compress", "finetune", "train", "tune")


def test_plain_import_does_not_load_the_engine_or_the_tuners():
  code = ("import sys, bigtune_jax; "
          "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
          "[['bigtune_jax', n] for n in ('train', 'tune', 'compress', 'finetune', 'hub')]))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", LAZY)
def test_subpackages_are_attributes_of_bt(name):
  module = getattr(bt, name)
  assert module.__name__ == f"bigtune_jax.{name}"
  assert name in dir(bt) and name in bt.__all__


def test_the_names_docstrings_use_resolve():
  assert callable(bt.train.fit) and callable(bt.tune.OptunaSearch)
  assert callable(bt.compress.prune) and callable(bt.finetune.LoRA)


def test_unknown_attribute_is_an_attribute_error():
  with pytest.raises(AttributeError, match="no attribute 'trian'"):
    bt.trian  # pylint: disable=pointless-statement


def _submodules():
  import pkgutil  # pylint: disable=g-import-not-at-top
  return [m.name for m in pkgutil.walk_packages(bt.__path__, "bigtune_jax.")]


def test_no_module_is_shadowed_by_a_name_of_its_package():
  """``import bigtune_jax.a.b`` gives module ``b`` and ``bigtune_jax.a.b`` is that module:
  no package exports a function or class under the name of one of its modules (``fit``
  the function lives in ``train/loop.py``, ``adam`` in ``transforms/adaptive_moments.py``)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  shadowed = []
  for name in _submodules():
    module = importlib.import_module(name)
    parent, _, leaf = name.rpartition(".")
    if getattr(importlib.import_module(parent), leaf) is not module:
      shadowed.append(name)
    assert isinstance(module, types.ModuleType)
  assert not shadowed, f"modules shadowed by a name of their package: {shadowed}"
  assert callable(bt.train.fit) and callable(bt.transforms.adam) and callable(bt.sgd)
