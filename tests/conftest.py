"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
  """Runs a test with float64 enabled (formula checks), restoring the flag after."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """Tests that share an expensive module- or session-scoped fixture of this suite (an
  8-device subprocess, a set of transformers checkpoints) run on one xdist worker
  (``--dist loadgroup``, set in pyproject.toml), so the fixture is built once, not once per
  worker."""
  del config
  for item in items:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
      continue
    for name in info.names_closure:
      definitions = info.name2fixturedefs.get(name) or ()
      if any(d.scope in ("module", "session") and getattr(d.func, "__module__", "")
             .startswith(("tests", "test_", "conftest")) for d in definitions):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        break
