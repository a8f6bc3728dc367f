"""Int8 quantization of Flax linen models with Google's qwix (seed 004 §3.1.1).

Symmetric int8 (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018), qwix's ``absmax`` calibration:

.. math::
  s = \\frac{\\max |x|}{127.5}, \\qquad q = \\operatorname{clip}(\\operatorname{round}(x / s),
  -128, 127), \\qquad \\hat{x} = s\\,q, \\qquad |x - \\hat{x}| \\le s / 2 .

* **Weights**: one scale per output channel (the last axis of a Dense ``(in, out)`` or
  Conv ``(h, w, in, out)`` kernel), stored as int8 values plus float32 scales.
* **Activations** (each Dense / Conv input): one static scale per tensor, *calibrated* on
  sample inputs: the mean over the calibration examples of each example's ``max |x|``
  (qwix's ``absmax`` along the batch axis, averaged); larger values are clipped.
* **Post-training quantization** (:func:`quantize`): ``qwix.quantize_params`` converts the
  float weights for a ``qwix.PtqProvider`` model, which run once on the calibration
  inputs creates the activation scales (each layer sees the outputs of the int8 layers
  before it); the returned :class:`QuantizedModel` multiplies int8 by int8 in every Dense
  and Conv.
* **Quantization-aware training** (:func:`qat_model`): ``qwix.QtProvider`` fake-quantizes
  weights and activations in the forward pass and passes gradients straight through the
  rounding (the straight-through estimator, Bengio et al., 2013). During training the
  activation ranges are per batch (dynamic), so the model trains with ``bt.train.fit`` as
  it is (no extra variable collections); :func:`quantize` calibrates the static ranges
  afterwards. The parameter tree is the float model's, so QAT can start from a trained one.
  (qwix can also record static ranges during QAT, in a ``quant_stats`` collection that the
  train step would have to carry; and under ``jit`` its Conv path leaks a tracer doing so
  in 0.1.8, so ranges are taken by the PTQ model instead.)

Everything numerical is qwix's; this module only wires the linen flow (the rules, the
calibration run, the conversion, the byte count). qwix is imported inside the functions,
so ``import bigtune_jax.compress`` works where qwix is not installed.
"""

import dataclasses
from collections.abc import Iterable
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.compress import storage


def _rule(rule_type, *, static: bool):
  """int8 weights and activations in every module; static (calibrated) activation scales."""
  return rule_type(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8,
                   **({"act_static_scale": True} if static else {}))


def _check_model(model) -> None:
  if not isinstance(model, nn.Module):
    raise ValueError(f"model must be a flax.linen Module, got {type(model).__name__}")


def qat_model(model: nn.Module) -> nn.Module:
  """``model`` with int8 fake quantization (straight-through gradients) in every Dense and
  Conv; same parameters, trains with ``bt.train.fit``."""
  import qwix  # pylint: disable=import-outside-toplevel
  _check_model(model)
  return qwix.quantize_model(model, qwix.QtProvider([_rule(qwix.QtRule, static=False)]))


@dataclasses.dataclass
class QuantizedModel:
  """An int8 model: a qwix PTQ linen module and its quantized parameters."""
  model: nn.Module
  params: Any  # int8 QArray values + float32 scales for kernels, float32 biases

  def __post_init__(self):
    self._apply = jax.jit(lambda params, x: self.model.apply({"params": params}, x))

  def apply(self, x: jax.Array) -> jax.Array:
    """The int8 model's outputs for ``x`` (jit-compiled)."""
    return self._apply(self.params, x)

  @property
  def nbytes(self) -> int:
    """Real bytes of the stored parameters (int8 values, scales, biases)."""
    return storage.dense_nbytes(self.params)


def quantize(model: nn.Module, params, calibration_inputs: Iterable[jax.Array]
             ) -> QuantizedModel:
  """Post-training int8 quantization of ``model`` (module docstring).

  Args:
    model: a flax linen module (e.g. ``bt.models.MLP``, ``SimpleCNN``), float or QAT.
    params: its float parameters.
    calibration_inputs: batches of inputs for the activation ranges (e.g. a few training
      batches); they are run as one batch.

  Returns:
    A :class:`QuantizedModel`; ``.apply(x)`` runs it and ``.nbytes`` is its size.
  """
  import qwix  # pylint: disable=import-outside-toplevel
  _check_model(model)
  inputs = [np.asarray(x) for x in calibration_inputs]
  if not inputs:
    raise ValueError("calibration_inputs must hold at least one batch of inputs")
  examples = jnp.asarray(np.concatenate(inputs))
  ptq = qwix.quantize_model(model, qwix.PtqProvider([_rule(qwix.QuantizationRule,
                                                             static=True)]))
  key = jax.random.key(0)  # flax wants one to create parameters; nothing random is drawn
  abstract = jax.eval_shape(ptq.init, key, examples[:1])["params"]
  # 1. Weights: int8 values and per-channel scales.
  weights = jax.jit(lambda p: qwix.quantize_params(p, abstract))(params)
  # 2. Activation scales: qwix's PTQ model, run once on the calibration examples, creates
  # each missing input scale from the activations it sees (after the int8 layers before).
  calibrate = jax.jit(lambda w, x: ptq.apply({"params": w}, x, mutable=["params"],
                                             rngs={"params": key})[1]["params"])
  return QuantizedModel(ptq, calibrate(weights, examples))


def kernels(quantized: QuantizedModel) -> dict[str, tuple[jax.Array, jax.Array]]:
  """``{path: (int8 values, scale)}`` of every quantized kernel (for inspection)."""
  found = {}
  for path, leaf in traverse_util.flatten_dict(quantized.params).items():
    array = getattr(leaf, "array", None)  # qwix's WithAux around a QArray
    if hasattr(array, "qvalue"):
      found["/".join(path)] = (array.qvalue, array.scale)
  return found
