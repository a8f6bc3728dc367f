"""NumPy float64 transcriptions of the documented formulas: the oracle of the formula tests.

Each optimizer is ``(init(leaves) -> state, step(leaves, grads, state, t) -> (leaves, state))``
over a list of arrays, with ``t = 1, 2, ...``; written from the equations in the docstrings
(and the papers), not from the implementation.
"""

import numpy as np


def _global_sq_norm(gs):
  return sum(float(np.sum(g * g)) for g in gs)


def sgd(lr):
  def step(ws, gs, state, t):
    return [w - lr(t) * g for w, g in zip(ws, gs)], state
  return lambda ws: None, step


def momentum(lr, gamma):
  def step(ws, gs, vs, t):
    vs = [gamma * v + lr(t) * g for v, g in zip(vs, gs)]
    return [w - v for w, v in zip(ws, vs)], vs
  return lambda ws: [np.zeros_like(w) for w in ws], step


def ema_momentum(lr, beta):
  def step(ws, gs, vs, t):
    vs = [beta * v + (1 - beta) * g for v, g in zip(vs, gs)]
    return [w - lr(t) * v for w, v in zip(ws, vs)], vs
  return lambda ws: [np.zeros_like(w) for w in ws], step


def _adam_direction(gs, state, t, b1, b2, eps):
  ms, vs = state
  ms = [b1 * m + (1 - b1) * g for m, g in zip(ms, gs)]
  vs = [b2 * v + (1 - b2) * g * g for v, g in zip(vs, gs)]
  ds = [(m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) for m, v in zip(ms, vs)]
  return ds, (ms, vs)


def adam(lr, b1, b2, eps):
  def step(ws, gs, state, t):
    ds, state = _adam_direction(gs, state, t, b1, b2, eps)
    return [w - lr(t) * d for w, d in zip(ws, ds)], state
  return lambda ws: ([np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]), step


def adaptive_sgd(lr, beta):
  def step(ws, gs, total, t):
    total = total + _global_sq_norm(gs)
    rate = lr(t) / (1 + beta * total)
    return [w - rate * g for w, g in zip(ws, gs)], total
  return lambda ws: 0.0, step


def hypergradient_sgd(lr0, hyper_lr):
  """Baydin et al. 2018, SGD-HD: alpha_t = alpha_{t-1} + beta g_t . g_{t-1}."""
  def step(ws, gs, state, t):
    alpha, prev = state
    alpha = alpha + hyper_lr * sum(float(np.sum(g * p)) for g, p in zip(gs, prev))
    return [w - alpha * g for w, g in zip(ws, gs)], (alpha, gs)
  return lambda ws: (lr0, [np.zeros_like(w) for w in ws]), step


def hypergradient_adam(lr0, hyper_lr, b1, b2, eps):
  """Baydin et al. 2018, Adam-HD: alpha_t = alpha_{t-1} + beta g_t . u_{t-1},
  u = m_hat / (sqrt(v_hat) + eps)."""
  def step(ws, gs, state, t):
    alpha, prev, moments = state
    alpha = alpha + hyper_lr * sum(float(np.sum(g * p)) for g, p in zip(gs, prev))
    ds, moments = _adam_direction(gs, moments, t, b1, b2, eps)
    return [w - alpha * d for w, d in zip(ws, ds)], (alpha, ds, moments)
  def init(ws):
    zeros = lambda: [np.zeros_like(w) for w in ws]
    return lr0, zeros(), (zeros(), zeros())
  return init, step


def regularized(inner, l1=0.0, l2=0.0):
  """``inner`` applied to ``g + l2 w + l1 sign(w)``."""
  init, inner_step = inner
  def step(ws, gs, state, t):
    gs = [g + l2 * w + l1 * np.sign(w) for w, g in zip(ws, gs)]
    return inner_step(ws, gs, state, t)
  return init, step


def step_decay_lr(lr, step_size, gamma):
  """lr * gamma ** floor(step / step_size), step counted from 0."""
  return lambda step: lr * gamma ** (step // step_size)


def warmup_cosine_lr(peak, warmup, total, init=0.0, end=0.0):
  def lr(step):
    if step < warmup:
      return init + (peak - init) * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * progress))
  return lr


def early_stopping(metrics, patience, min_delta, mode):
  """Returns per-update (best, best_step, should_stop), straight from the definition."""
  best, best_step, bad, stopped, out = (np.inf if mode == "min" else -np.inf), -1, 0, False, []
  for i, x in enumerate(metrics):
    improved = x < best - min_delta if mode == "min" else x > best + min_delta
    if improved:
      best, best_step, bad = x, i, 0
    else:
      bad += 1
      stopped = stopped or bad >= patience
    out.append((best, best_step, stopped))
  return out


_ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0.0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
                "tanh": np.tanh}


def mlp_logits(params, images, activation="relu"):
  """``bt.models.MLP``'s forward pass: inputs flattened, ``x W + b`` per Dense layer
  (``hidden_0``, ``hidden_1``, ..., then ``head``), the activation after each hidden one."""
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  for i in range(len(params) - 1):
    layer = params[f"hidden_{i}"]
    x = _ACTIVATIONS[activation](x @ np.asarray(layer["kernel"], np.float64) + layer["bias"])
  return x @ np.asarray(params["head"]["kernel"], np.float64) + params["head"]["bias"]


def _conv_valid(x, kernel, bias):
  """A stride-1 VALID cross-correlation of NHWC ``x`` with an HWIO ``kernel`` (flax's layout)."""
  h, w = kernel.shape[:2]
  windows = np.lib.stride_tricks.sliding_window_view(x, (h, w), axis=(1, 2))  # B,H',W',C,h,w
  return np.einsum("bijcuv,uvco->bijo", windows, np.asarray(kernel, np.float64)) + bias


def _max_pool_2x2(x):
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def simple_cnn_logits(params, images):
  """``bt.models.SimpleCNN``'s forward pass (the seed's network): conv 5x5 -> ReLU -> 2x2
  max-pool, twice, then the NHWC features flattened, Dense -> ReLU -> Dense."""
  x = np.asarray(images, np.float64)
  for conv in ("conv1", "conv2"):
    x = _max_pool_2x2(np.maximum(_conv_valid(x, params[conv]["kernel"], params[conv]["bias"]), 0))
  x = x.reshape(len(x), -1)
  x = np.maximum(x @ np.asarray(params["fc1"]["kernel"], np.float64) + params["fc1"]["bias"], 0)
  return x @ np.asarray(params["fc2"]["kernel"], np.float64) + params["fc2"]["bias"]


def cross_entropy_and_accuracy(logits, labels):
  """Mean ``-log softmax(logits)[label]``, and the fraction whose largest logit is the
  label's."""
  z = logits - logits.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  rows = np.arange(len(labels))
  return float(-log_p[rows, labels].mean()), float(np.mean(logits.argmax(axis=1) == labels))


def first_plateau(metrics, patience, threshold):
  """Index of the first metric on which ``ReduceLROnPlateau(mode="min", threshold_mode="rel")``
  cuts the rate: the ``patience + 1``-th in a row not below ``best * (1 - threshold)``."""
  best, bad = np.inf, 0
  for i, x in enumerate(metrics):
    best, bad = (x, 0) if x < best * (1 - threshold) else (best, bad + 1)
    if bad > patience:
      return i
  return None
