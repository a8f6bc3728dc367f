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
