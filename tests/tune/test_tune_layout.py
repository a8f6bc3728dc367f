"""tune/ in two halves (DESIGN.md): tune/search proposes and never trains, tune/population
executes and never proposes; neither imports the other, and bt.tune keeps its names."""

import ast
import pathlib

import bigtune_jax as bt

TUNE = pathlib.Path(bt.__file__).parent / "tune"


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
  return names


def test_search_and_population_do_not_import_each_other():
  for half in ("search", "population"):
    files = sorted((TUNE / half).glob("*.py"))
    assert len(files) >= 4, f"tune/{half}/ holds {files}"
    for path in files:  # within tune/, only its own half (not bigtune_jax.tune itself)
      crossing = {m for m in _imports(path) if m.startswith("bigtune_jax.tune")
                  and not m.startswith(f"bigtune_jax.tune.{half}")}
      assert not crossing, f"tune/{half}/{path.name} imports {crossing}"
  # beside them only the search function that uses both
  assert sorted(p.name for p in TUNE.glob("*.py")) == ["__init__.py", "population_search.py"]


def test_public_tune_names_stay():
  for name in ("GridSearch", "RandomSearch", "OptunaSearch", "Space", "LogUniform",
               "build_strategy", "build_structure", "train_population", "PopulationResult",
               "train_adapter_population", "AdapterPopulationResult", "pbt",
               "exploit_and_explore", "darts_search", "initial_state"):
    assert getattr(bt.tune, name) is not None and name in bt.tune.__all__
