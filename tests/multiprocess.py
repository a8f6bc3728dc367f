"""Launching the worker scripts of the sharding and distributed tests in fresh processes.

XLA reads ``--xla_force_host_platform_device_count`` once, when JAX starts its CPU backend,
and the rest of the suite runs on one device in the pytest process: so the multi-device
checks run in subprocesses, each with its own device count.
"""

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# LLVM -O0: the workers' models are tiny, and compiling dominates their time.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def environment(devices: int, **extra: str) -> dict:
  """This environment for a CPU-only JAX with ``devices`` fake devices."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  flags = env.get("XLA_FLAGS", "")
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices} "
                       f"{FAST_COMPILE}".strip(), **extra)
  return env


def start(module: str, *args: str, devices: int, **extra: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          env=environment(devices, **extra), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
  """Waits for ``process``; raises with the end of its output unless it succeeded."""
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    raise AssertionError(f"{process.args} timed out after {timeout} s:\n{output[-3000:]}")
  if process.returncode:
    raise AssertionError(f"{process.args} exited with {process.returncode}:\n{output[-3000:]}")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
