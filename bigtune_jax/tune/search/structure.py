"""Structure search over the MLP (seed 003 §3.2 "结构调优"; seed 000 §2.3 names layer
number and hidden units as hyperparameters): grid or random search over

.. math::
  \\text{layers} \\in \\{1, \\dots, L\\}, \\quad
  \\text{hidden} \\in \\{w_1, \\dots, w_m\\}, \\quad
  \\text{activation} \\in \\{\\text{relu}, \\text{tanh}, \\text{gelu}, \\dots\\}

is :class:`~bigtune_jax.tune.GridSearch` / :class:`~bigtune_jax.tune.RandomSearch` on
:func:`structure_space`, each configuration built by :func:`build_structure` into
``bigtune_jax.models.MLP(hidden=(hidden,) * layers, activation=...)`` (equal widths, as
in the seed's examples). The gradient-based structure search of §3.2.1 is DARTS
(``bigtune_jax.tune.population.darts``).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from bigtune_jax.models.mlp import ACTIVATIONS
from bigtune_jax.models.mlp import MLP
from bigtune_jax import validation
from bigtune_jax.tune.search.space import Choice
from bigtune_jax.tune.search.space import Int
from bigtune_jax.tune.search.space import Space

KEYS = ("layers", "hidden", "activation", "dropout_rate")


def build_structure(config: Mapping[str, Any], num_classes: int = 10) -> MLP:
  """``MLP(hidden=(config["hidden"],) * config["layers"], activation, dropout_rate)``.

  Args:
    config: ``layers`` (hidden layers, an integer >= 0), ``hidden`` (units per hidden
      layer, >= 1; not needed when ``layers`` is 0), and optionally ``activation``
      (default ``"relu"``) and ``dropout_rate`` (default 0).
    num_classes: outputs of the classifier.

  Raises:
    ValueError: naming the key, for an unknown or missing key or a value out of range.
  """
  if not isinstance(config, Mapping):
    raise ValueError(f"config must be a mapping, got {config!r}")
  for key in config:
    validation.check_choice("structure key", key, KEYS)
  if "layers" not in config:
    raise ValueError("structure config is missing 'layers'")
  validation.check_int("layers", config["layers"], 0)
  if config["layers"] and "hidden" not in config:
    raise ValueError("structure config is missing 'hidden' (units per hidden layer)")
  if config["layers"]:
    validation.check_int("hidden", config["hidden"], 1)
  return MLP(hidden=(int(config.get("hidden", 1)),) * int(config["layers"]),
             num_classes=num_classes, activation=config.get("activation", "relu"),
             dropout_rate=config.get("dropout_rate", 0.0))


def structure_space(max_layers: int = 3, widths: Sequence[int] = (32, 64, 128, 256),
                    activations: Sequence[str] = ("relu", "tanh", "gelu")) -> Space:
  """``layers`` in ``1..max_layers``, ``hidden`` among ``widths``, ``activation`` among
  ``activations`` (names of ``bigtune_jax.models.mlp.ACTIVATIONS``)."""
  validation.check_int("max_layers", max_layers, 1)
  for name in activations:
    validation.check_choice("activations", name, ACTIVATIONS)
  layers = Int(1, max_layers) if max_layers > 1 else Choice([1])
  return Space({"layers": layers, "hidden": Choice(list(widths)),
                "activation": Choice(list(activations))})
