"""The linear-regression toy of seed 002 §4.1 and §4.4, generated in numpy.

Seed 002 §4.1 fits ``y_pred = theta * x`` to the single point ``x = 1, y = 2`` (so the
answer is ``theta = 2``); §4.4 draws ``x = torch.randn(100, 1)`` and
``y = theta * x + torch.randn(100, 1) * 0.1`` for a ``LinearRegression`` model, but with
``theta`` still 0 at that moment, so its targets are pure noise and there is nothing to
learn. We keep §4.4's shapes and noise and take the slope 2 of §4.1:
``y = 2 x + 0.1 eps`` with ``x, eps ~ N(0, 1)``, 100 examples of one feature. The least-
squares slope of the default draw is close to 2 (within a few times 0.1 / sqrt(100)).

Both draws come from one ``np.random.default_rng(seed)``, ``x`` first, then ``eps``, so the
data are reproducible without PyTorch's generator (which numpy cannot replay).
"""

import numpy as np

from bigtune_jax.validation import check_int


def linear_regression_toy(num_examples: int = 100, *, slope: float = 2.0,
                          noise_std: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
  """``{"x": float32 (n, 1), "y": float32 (n, 1)}`` with ``y = slope x + noise_std eps``."""
  num_examples = check_int("num_examples", num_examples, 1)
  if not noise_std >= 0:
    raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((num_examples, 1))
  eps = rng.standard_normal((num_examples, 1))
  y = slope * x + noise_std * eps
  return {"x": x.astype(np.float32), "y": y.astype(np.float32)}
