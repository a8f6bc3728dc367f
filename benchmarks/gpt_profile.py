"""Where a training step's GPU time goes: kernel times of a few profiled steps, by kind.

Used by ``benchmarks/gpt_step.py --profile``. JAX: ``jax.profiler.trace`` and the XSpace it
writes, read back with ``jax.profiler.ProfileData``; PyTorch: ``torch.profiler``. Each
kernel is put in one category by its name (``CATEGORIES``, first match wins; "other" is
the elementwise and reduction kernels: layer norms, GELU, residual adds, softmax,
optimizer, casts). Kernel time summed per step is compared with the step's wall time:
the difference is time the GPU sat idle (launch gaps, host work) when kernels do not
overlap. Profiling changes what it measures a little (XLA turns CUDA graphs off while a
profile is active), so the timings come from the unprofiled runs.
"""

import collections
import glob
import re
import tempfile
import time

CATEGORIES = (  # (name, regular expression on the kernel name), first match wins
    ("attention", r"fmha|flash|attention|sdpa|attn"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|wgmma|gemv|matmul|_mm_|triton_.*dot|^dot"),
    ("copy", r"memcpy|memset|copy"),
)


def categorize(name: str) -> str:
  lowered = name.lower()
  for category, pattern in CATEGORIES:
    if re.search(pattern, lowered):
      return category
  return "other"


def summarize(kernels: dict[str, float], steps: int, wall_s: float, top: int = 400) -> dict:
  """``kernels``: name -> total microseconds over ``steps`` steps taking ``wall_s``."""
  per_step = {name: us / steps / 1e3 for name, us in kernels.items()}  # ms per step
  by_category = collections.Counter()
  for name, ms in per_step.items():
    by_category[categorize(name)] += ms
  busy = sum(per_step.values())
  wall = 1e3 * wall_s / steps
  return {"kernel_ms_per_step": busy, "wall_ms_per_step": wall,
          "idle_ms_per_step": max(wall - busy, 0.0),
          "categories_ms": dict(by_category.most_common()),
          "top_kernels_ms": [[name[:120], round(ms, 4), categorize(name)] for name, ms in
                             sorted(per_step.items(), key=lambda kv: -kv[1])[:top]]}


def jax_kernels(run_step, steps: int = 3) -> dict:
  """Profiles ``steps`` calls of ``run_step()`` (each ends with block_until_ready)."""
  import jax
  from jax.profiler import ProfileData

  directory = tempfile.mkdtemp(prefix="gpt_profile_")
  with jax.profiler.trace(directory):
    start = time.perf_counter()
    for _ in range(steps):
      run_step()
    wall = time.perf_counter() - start
  kernels = collections.Counter()
  for path in glob.glob(f"{directory}/**/*.xplane.pb", recursive=True):
    for plane in ProfileData.from_file(path).planes:
      if not plane.name.startswith("/device:GPU"):
        continue
      for line in plane.lines:
        if "stream" not in line.name.lower():  # derived lines repeat the stream's kernels
          continue
        for event in line.events:
          kernels[event.name] += event.duration_ns / 1e3
  return summarize(kernels, steps, wall)


def torch_kernels(run_step, device, steps: int = 3) -> dict:
  """Profiles ``steps`` calls of ``run_step()`` with torch.profiler (CUDA kernels only)."""
  import torch
  from torch.profiler import ProfilerActivity, profile

  torch.cuda.synchronize(device)
  with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      run_step()
    torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
  kernels = collections.Counter()
  for event in prof.events():
    if (event.device_type == torch.autograd.DeviceType.CUDA
        and not getattr(event, "is_user_annotation", False)):  # "Optimizer.step#..." ranges
      kernels[event.name] += event.time_range.elapsed_us()
  return summarize(kernels, steps, wall)
