"""JAX's persistent compilation cache in a folder of the run, so that a resumed or
repeated study does not compile again what an earlier process compiled.

JAX keys each compiled program by its computation, devices and compile options
(``jax_compilation_cache_dir``; https://docs.jax.dev/en/latest/persistent_compilation_cache.html);
a later process that compiles the same program reads it from the folder instead. One
folder per process: the first setting wins, so a cache the caller (or the test suite's
``conftest.py``, through ``JAX_COMPILATION_CACHE_DIR``) already chose is left as it is.
Imports nothing of the package but JAX, so a launcher can call it before anything compiles.
"""

import math
import os

import jax


def enable_compile_cache(directory: str | os.PathLike, *,
                         min_compile_time_s: float = 1.0) -> str:
  """Points JAX's persistent compilation cache at ``directory`` (created if missing) for
  programs that took at least ``min_compile_time_s`` seconds to compile, unless this
  process already has a cache folder; returns the folder in use."""
  if not (isinstance(min_compile_time_s, (int, float)) and math.isfinite(min_compile_time_s)
          and min_compile_time_s >= 0):
    raise ValueError(f"min_compile_time_s must be a finite number >= 0, got "
                     f"{min_compile_time_s!r}")
  current = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if current:
    return current
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise ValueError(f"compile cache directory {directory} exists and is not a folder")
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  return directory
