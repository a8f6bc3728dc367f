"""What a population's members are: whole models, or LoRA adapters over one frozen base
(seed 003 §3.1, many trials at once; seed 001 §6.4, the fine-tuning hyperparameters).

The runner (``population.runner``) is the same for both; only "what trains" varies, as a
hashable *kind* (a static argument of the compiled programs) and the arrays every member
shares (``shared``: None for whole models, the frozen pretrained parameters for adapters,
held once and broadcast, never vmapped):

* :class:`WholeModels`: member :math:`i` trains all of ``model``'s parameters :math:`w^i`,
  drawn from its seed as ``bt.train.init_params(model, x, seed_i)``.
* :class:`AdapterMembers`: member :math:`i` trains adapters :math:`\\theta^i` of a
  ``finetune.LoRA`` over the frozen :math:`W`, with its own ``alpha`` and ``rank`` (at most
  the LoRA's stored rank :math:`r_{max}`; columns past it are masked, so different ranks
  share one program). ``A``'s column :math:`j` is drawn from ``fold_in(key, j)``, so the
  first :math:`r_i` columns are exactly the adapter of rank :math:`r_i` trained alone:
  ``member`` slices them off and returns a ``finetune.Adapters`` carrying rank and alpha.
* Flax NNX (``nnx_members``): an NNX model factory's whole models, or the ``nnx.LoRAParam``
  adapters of an NNX model, in the same functional form (``nnx.split`` / ``nnx.merge``).

A member's initial state is built by one function jitted once per kind and optimizer
builder (:func:`initial_state`; the hyperparameters and the seed are traced), whatever the
population's size: the population stacks its members' states. An NNX member's initial
tree is drawn on the host first (``params_on_host``), as its solo run draws it.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax.finetune.adapters import Adapters
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.finetune.carried import check_member_values
from bigtune_jax.finetune.carried import member_adapters
from bigtune_jax.train.state import TrainState
from bigtune_jax.train.state import create_train_state
from bigtune_jax.train.state import params_from_key
from bigtune_jax.train.step import LossFn
from bigtune_jax import validation
from bigtune_jax.tune.population import nnx_members
from bigtune_jax.tune.population.data import PopulationData
from bigtune_jax.tune.population.data import as_arrays
from bigtune_jax.tune.population.data import model_input

MakeOptimizer = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]


def _vocab_size(model: nn.Module) -> int | None:
  """A language model's vocabulary size (its config's ``vocab_size``), else None."""
  return getattr(getattr(model, "config", None), "vocab_size", None)


@dataclasses.dataclass(frozen=True)
class WholeModels:
  """Members that each train all of ``model``'s parameters with ``loss_fn``."""
  model: nn.Module
  loss_fn: LossFn

  def check(self, values: Mapping[str, np.ndarray], shared) -> None:
    if shared is not None:
      raise ValueError("base_params is only for a finetune.LoRA (adapters over a frozen "
                       f"base); got base_params for the flax module {type(self.model).__name__}")

  def loss(self, shared, hp) -> LossFn:
    del shared, hp
    return self.loss_fn

  def init_params(self, seed: jax.Array, sample: jax.Array, shared):
    del shared
    return params_from_key(self.model, jax.random.key(seed), sample)  # as init_params

  def member(self, params, hp: Mapping[str, float]):
    """Member parameters as trained (one tree without the member axis)."""
    del hp
    return params


@dataclasses.dataclass(frozen=True)
class AdapterMembers:
  """Members that each train adapters of ``lora`` over one frozen base; ``hparams`` may
  hold ``alpha`` (> 0) and ``rank`` (an integer in ``[1, lora.rank]``)."""
  lora: LoRA
  loss_fn: LossFn

  @property
  def model(self) -> nn.Module:
    return self.lora.model

  def check(self, values: Mapping[str, np.ndarray], shared) -> None:
    if shared is None:
      raise ValueError("base_params: the frozen parameters the LoRA adapters train over, "
                       "got None")
    check_member_values(values, self.lora.rank)
    self.lora.layers(shared)  # targets and rank against the model, before any work

  def loss(self, base, hp) -> LossFn:
    return self.lora.loss(self.loss_fn, base, alpha=hp.get("alpha"), rank=hp.get("rank"))

  def init_params(self, seed: jax.Array, sample: jax.Array, base):
    del sample  # a language model's adapters are found on a (1, 1) token batch
    return self.lora.init(jax.random.key(seed), base)

  def member(self, params, hp: Mapping[str, float]) -> Adapters:
    """The member's adapters at its own rank (the first ``rank`` columns of every ``A``,
    rows of every ``B``; ``also_train`` leaves whole) and alpha: what the adapter trained
    alone at that rank holds (``finetune.member_adapters``)."""
    rank = int(round(float(hp["rank"]))) if "rank" in hp else self.lora.rank
    alpha = float(hp["alpha"]) if "alpha" in hp else float(self.lora.alpha)
    return member_adapters(params, rank, alpha)


Kind = WholeModels | AdapterMembers | nnx_members.NNXModels | nnx_members.NNXAdapters


def members_for(model, loss_fn: LossFn, base_params) -> Kind:
  """The kind of members ``model`` names: a linen module's whole models, a
  ``finetune.LoRA``'s adapters over ``base_params``, an NNX factory's whole models or an
  NNX model's LoRA adapters (``nnx_members.nnx_kind``); ValueError for anything else."""
  if isinstance(model, LoRA):
    return AdapterMembers(model, loss_fn)
  if isinstance(model, nn.Module):
    return WholeModels(model, loss_fn)
  return nnx_members.nnx_kind(model, loss_fn)


def check_hparams(hparams: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
  """``hparams`` as float32 arrays of one common length N >= 1; ValueError otherwise."""
  if not isinstance(hparams, Mapping) or not hparams:
    raise ValueError("hparams must be a non-empty mapping {name: N values}, got "
                     f"{hparams!r}")
  arrays = {}
  for name, values in hparams.items():
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not len(array) or not np.all(np.isfinite(array)):
      raise ValueError(f"hparams[{name!r}] must be a 1-D sequence of finite numbers, one "
                       f"per member, got {values!r}")
    arrays[name] = array.astype(np.float32)
  sizes = {name: len(a) for name, a in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"every hparams entry needs the same length N (members); got {sizes}")
  return arrays, next(iter(sizes.values()))


def check_member_optimizers(make_optimizer, values: Mapping[str, np.ndarray], n: int) -> None:
  """Builds each member's optimizer once on the host with its concrete values, so that
  bt's constructors refuse an out-of-range value (momentum 1.5) naming the member, before
  tracing (where values are abstract and cannot be checked)."""
  for i in range(n):
    member = {name: np.float32(v[i]) for name, v in values.items()}
    try:
      make_optimizer(member)
    except ValueError as error:
      shown = {name: float(f"{float(value):.7g}") for name, value in member.items()}
      raise ValueError(f"member {i} of the population {shown}: {error}") from None
    except Exception:  # pylint: disable=broad-except
      return  # a builder that needs traced arrays: the traced run reports its own errors


def check_seeds(member_seeds: Sequence[int] | None, seed: int, n: int,
                name: str = "member_seeds") -> np.ndarray:
  """The members' seeds, ``(n,)`` int32: ``member_seeds`` (the argument ``name``), or
  ``seed`` for every member."""
  validation.check_int("seed", seed, 0)
  if member_seeds is None:
    return np.full(n, seed, np.int32)
  seeds = np.asarray(member_seeds)
  if seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer) or (seeds < 0).any():
    raise ValueError(f"{name} must be {n} integers >= 0 (one per member), got "
                     f"{member_seeds!r}")
  return seeds.astype(np.int32)


def load_data(kind: Kind, train_data, val_data, batch_size: int, seed: int,
              eval_batch_size: int) -> PopulationData:
  """The population's data on the device, token ids checked first for a language model."""
  vocab = _vocab_size(kind.model)
  return PopulationData(as_arrays(train_data, "train_data", vocab),
                        None if val_data is None else as_arrays(val_data, "val_data", vocab),
                        batch_size, seed, eval_batch_size)


def _init_member(kind: Kind, make_optimizer: MakeOptimizer, hp, seed, sample, shared,
                 params=None):
  """One member's state, ``tx=None`` (the population rebuilds it from ``hp`` each step);
  ``params``: its initial tree drawn on the host already (:func:`_host_params`), or None
  to draw it here."""
  if params is None:
    params = kind.init_params(seed, sample, shared)
  return create_train_state(kind.model, params, make_optimizer(hp), seed=seed).replace(tx=None)


@functools.cache
def _init_program():
  """``_init_member`` jitted (once per kind and optimizer builder); on a CPU at XLA's
  backend optimization level 0, which compiles flax's init (threefry, truncated normals)
  about 4 times faster with the same results."""
  quick = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jax.jit(_init_member, static_argnames=("kind", "make_optimizer"),
                 compiler_options=quick)


def _host_params(kind: Kind, seed: int, shared):
  """A member's initial tree drawn on the host, op by op, where its kind draws it there
  (``params_on_host``: the NNX kinds, exactly as a solo run builds its module), else None:
  the init program draws it."""
  draw = getattr(kind, "params_on_host", None)
  return None if draw is None else draw(int(seed), shared)


def _member_hparams(values: Mapping[str, np.ndarray], i: int) -> dict[str, jax.Array]:
  return {name: jnp.float32(v[i]) for name, v in values.items()}


def member_states(kind: Kind, make_optimizer: MakeOptimizer, values: Mapping[str, np.ndarray],
                  seeds: np.ndarray, sample: jax.Array, shared) -> list:
  """Each member's state at step 0, one unstacked state per member: ``_init_member`` with
  its own hyperparameters and seed, the one compiled program called once per member."""
  return [_init_program()(kind, make_optimizer, _member_hparams(values, i), jnp.int32(s),
                          sample, shared, _host_params(kind, s, shared))
          for i, s in enumerate(seeds)]


def init_states(kind: Kind, make_optimizer: MakeOptimizer, values: Mapping[str, np.ndarray],
                seeds: np.ndarray, sample: jax.Array, shared):
  """The members' states (:func:`member_states`) stacked (leading axis N) by one program
  (stacking leaf by leaf compiles a program per leaf shape)."""
  return _stack_program()(member_states(kind, make_optimizer, values, seeds, sample, shared))


@functools.cache
def _stack_program():
  return jax.jit(lambda states: jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def initial_state(model, loss_fn: LossFn, make_optimizer: MakeOptimizer,
                  hparams: Mapping[str, float], train_data, *, seed: int = 0,
                  base_params=None, input_key: str | None = None) -> TrainState:
  """One member's state at step 0, exactly as a population with these ``hparams`` and
  ``seed`` starts it (the same compiled program), with ``tx = make_optimizer(hparams)`` so
  that ``bt.train.fit`` can continue from it.

  Args:
    model: as ``members_for``: a linen module or an NNX factory (whole model), a
      ``finetune.LoRA`` (adapters over ``base_params``) or an LoRA-adapted NNX model.
    loss_fn, make_optimizer, input_key: as ``train_population``.
    hparams: ``{name: value}``, one member's hyperparameters.
    train_data: the training set (its first example shapes the parameters).
    seed: the member's init and dropout seed.
  """
  kind = members_for(model, loss_fn, base_params)
  values, _ = check_hparams({k: [v] for k, v in dict(hparams).items()})
  kind.check(values, base_params)
  check_member_optimizers(make_optimizer, values, 1)
  validation.check_int("seed", seed, 0)
  train_data = as_arrays(train_data, "train_data", _vocab_size(kind.model))
  sample = model_input({k: a[:1] for k, a in train_data.arrays.items()}, input_key)
  hp = _member_hparams(values, 0)
  state = _init_program()(kind, make_optimizer, hp, jnp.int32(seed), sample, base_params,
                          _host_params(kind, seed, base_params))
  return state.replace(tx=make_optimizer(hp))
