"""Population training: N configurations trained in one jit-compiled program (seed 003 §3.1,
"many trials at once"; the vectorized population of Jaderberg et al., 2017, arXiv:1711.09846).

Member :math:`i` has its own parameters :math:`w^i`, optimizer state :math:`s^i` and
continuous hyperparameters :math:`h^i` (learning rate, momentum, weight decay, Adam's
:math:`\\beta`'s, ...); every step all members see the same batch :math:`B_t`:

.. math::
  (u^i, s^i_{t+1}) = tx(h^i)\\big(\\nabla \\ell(w^i_t; B_t), s^i_t, w^i_t\\big), \\qquad
  w^i_{t+1} = w^i_t + u^i, \\qquad i = 1..N

as ``jax.vmap`` over :math:`(w, s, h)` of ``bigtune_jax.train.make_train_step`` (NaN guard
included), with the batch broadcast, inside a ``lax.scan`` over the steps between two
evaluations. ``make_optimizer(h)`` is called *inside* the vmapped function with traced
scalars, so the hyperparameters are data: another population of the same size, model and
batch size runs the program already compiled (the jitted functions take ``model``,
``loss_fn`` and ``make_optimizer`` as static arguments: pass the same objects to reuse it).

Data: the training arrays live on the device; the host sends only the row indices of each
step, the order of ``ArrayDataset.batches(batch_size, seed=seed, epoch=e)`` (remainder
dropped), so member :math:`i` takes exactly the steps it would take trained alone by
``bt.train.fit`` / a plain loop over ``make_train_step`` with ``FitConfig(seed=seed)``.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.data.pipeline import epoch_order
from bigtune_jax.train import step as step_lib
from bigtune_jax.train.state import create_train_state
from bigtune_jax.train.state import params_from_key
from bigtune_jax.train.step import LossFn
from bigtune_jax.train.step import make_eval_step
from bigtune_jax.train.step import make_train_step
from bigtune_jax import validation

MakeOptimizer = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]


@dataclasses.dataclass
class PopulationResult:
  """What :func:`train_population` (and ``pbt``) return; arrays have a leading axis N."""
  params: Any  # the stacked parameters, each leaf (N, ...)
  hparams: dict[str, np.ndarray]  # (N,) each: the values in effect at the end
  history: list[dict]  # per evaluation: step, train_loss, val_loss, val_accuracy, (N,) each
  final: dict[str, np.ndarray]  # the last evaluation: val_loss, val_accuracy, (N,) each
  steps: int  # steps trained (fewer than asked when every member was stopped)
  wall_s: float
  stopped: np.ndarray  # (N,) bool: stopped by on_eval


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


def check_seeds(member_seeds: Sequence[int] | None, seed: int, n: int) -> np.ndarray:
  """The members' seeds: ``(n,)`` int32, or the scalar ``seed`` shared by all."""
  validation.check_int("seed", seed, 0)
  if member_seeds is None:
    return np.asarray(seed, np.int32)
  seeds = np.asarray(member_seeds)
  if seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer) or (seeds < 0).any():
    raise ValueError(f"member_seeds must be {n} integers >= 0 (one per member), got "
                     f"{member_seeds!r}")
  return seeds.astype(np.int32)


def init_members(model: nn.Module, make_optimizer: MakeOptimizer, sample: jax.Array,
                 hparams: Mapping[str, jax.Array], seeds: jax.Array):
  """Stacked ``TrainState`` s (``tx=None``: the optimizer is rebuilt from ``hparams`` each
  step); member i is ``create_train_state(model, init_params(model, sample, seeds[i]),
  make_optimizer(hparams_i), seed=seeds[i])``. A scalar ``seeds`` is every member's: the
  parameters are then drawn once (vmapping flax's init compiles slowly on a CPU)."""
  init = lambda seed: params_from_key(model, jax.random.key(seed), sample)  # as init_params

  def state(hp, params, seed):
    return create_train_state(model, params, make_optimizer(hp), seed=seed).replace(tx=None)

  if seeds.ndim == 0:
    return jax.vmap(state, in_axes=(0, None, None))(hparams, init(seeds), seeds)
  return jax.vmap(lambda hp, seed: state(hp, init(seed), seed))(hparams, seeds)


def _member_loss(loss_fn, frozen, hp) -> LossFn:
  """``loss_fn`` itself, or with frozen weights shared by all members (adapter
  populations) ``loss_fn(frozen, hp)``: the member's loss over its own trainable tree."""
  return loss_fn if frozen is None else loss_fn(frozen, hp)


def train_members(loss_fn: LossFn, make_optimizer: MakeOptimizer, states, hparams, active,
                  data: Mapping[str, jax.Array], rows: jax.Array, chunk: int | None = None,
                  frozen=None):
  """``len(rows)`` steps of every member on the shared batches ``data[rows[t]]``; members
  whose ``active`` is False keep their state (``active=None``: all train). Returns
  ``(states, train_loss (N,))``, the loss averaged over the steps.

  ``chunk`` (a divisor of N; None: N) members are vmapped together through all the steps,
  and ``lax.map`` runs the N / chunk chunks one after another: the same arithmetic, but a
  CPU keeps a small chunk's parameters and optimizer state in its caches over the steps.

  ``frozen``: weights every member shares and none trains (a pretrained base under
  adapters), held once and broadcast, not vmapped; ``loss_fn(frozen, hp)`` is then member
  ``hp``'s loss.
  """

  def member_step(state, hp, live, batch):
    train_step = make_train_step(_member_loss(loss_fn, frozen, hp))
    new, metrics = train_step(state.replace(tx=make_optimizer(hp)), batch)
    new = new.replace(tx=None)
    if live is not None:
      new = jax.tree.map(lambda n, o: jnp.where(live, n, o), new, state)
    return new, metrics["loss"]

  def run(members):
    states, hparams, active = members

    def step(states, step_rows):
      batch = {name: array[step_rows] for name, array in data.items()}
      batch["mask"] = jnp.ones(step_rows.shape, bool)
      in_axes = (0, 0, None if active is None else 0, None)
      return jax.vmap(member_step, in_axes=in_axes)(states, hparams, active, batch)

    states, losses = jax.lax.scan(step, states, rows)  # losses: (steps, members)
    return states, losses.mean(axis=0)

  n = next(iter(hparams.values())).shape[0]
  if chunk is None or chunk >= n:
    return run((states, hparams, active))
  split = lambda x: x.reshape(n // chunk, chunk, *x.shape[1:])
  merge = lambda x: x.reshape(n, *x.shape[2:])
  out = jax.lax.map(run, jax.tree.map(split, (states, hparams, active)))
  return jax.tree.map(merge, out)


def check_member_chunk(member_chunk: int | None, n: int) -> None:
  """ValueError unless ``member_chunk`` is None or a divisor of the member count ``n``."""
  if member_chunk is not None:
    validation.check_int("member_chunk", member_chunk, 1)
    if n % member_chunk:
      raise ValueError(f"member_chunk must be a divisor of the number of members {n}, got "
                       f"{member_chunk}")


def choose_chunk(params) -> int:
  """The ``chunk`` of ``train_members`` for stacked ``params`` (leading axis N): all N on
  an accelerator; on a CPU the largest divisor of N whose chunk holds at most 2^18
  parameters (1 MB in float32; with gradients and momentum it stays in a core's caches).
  Measured on 2 CPU cores: 64 members of a 784-256-10 MLP train 1.5-2x slower all
  vmapped together than one at a time; 8 of a 64-256-256-10 MLP fastest 2 at a time, of
  a 64-64-10 MLP all together.
  """
  leaves = jax.tree.leaves(params)
  n = leaves[0].shape[0]
  if jax.default_backend() != "cpu":
    return n
  per_member = sum(leaf.size for leaf in leaves) // n
  fits = max(1, (1 << 18) // max(per_member, 1))
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= fits)


def evaluate_members(loss_fn: LossFn, params, val_batches: Mapping[str, jax.Array],
                     frozen=None, hparams=None) -> dict:
  """Every member's summed eval metrics (``loss_sum``, ``count``, ``correct``; (N,) each)
  over the stacked, padded validation batches ``(num_batches, batch, ...)``; ``frozen`` and
  ``hparams`` as in :func:`train_members`."""

  def member(p, hp):
    eval_step = make_eval_step(_member_loss(loss_fn, frozen, hp))
    sums = jax.lax.map(lambda batch: eval_step(p, batch), val_batches)
    return jax.tree.map(lambda s: s.sum(axis=0), sums)

  return jax.vmap(member, in_axes=(0, None if hparams is None else 0))(params, hparams)


def mean_metrics(sums: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """``{"val_loss": (N,), "val_accuracy": (N,)}`` from summed eval metrics."""
  sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(dict(sums)).items()}
  return {f"val_{name}": mean for name, mean in step_lib.mean_metrics(sums).items()}


class Programs(NamedTuple):
  """The jit-compiled population functions (see :func:`jitted`)."""
  init: Callable  # init_members
  train: Callable  # train_members
  evaluate: Callable  # evaluate_members


@functools.cache
def jitted() -> Programs:
  """The jit-compiled ``init_members``, ``train_members`` and ``evaluate_members``.

  Initialization and evaluation run rarely; on a CPU they are compiled at XLA's backend
  optimization level 0, which compiles flax's init (threefry, truncated normals) about
  4 times faster, and the evaluation 2 times faster, with the same results and no slower
  runs. The training scan keeps the full optimization (it runs 3 times slower at level 0).
  """
  quick = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return Programs(
      init=jax.jit(init_members, static_argnames=("model", "make_optimizer"),
                   compiler_options=quick),
      train=jax.jit(train_members, static_argnames=("loss_fn", "make_optimizer", "chunk"),
                    donate_argnames=("states",)),
      evaluate=jax.jit(evaluate_members, static_argnames=("loss_fn",), compiler_options=quick))


class PopulationData:
  """A dataset's arrays on the device and the row indices of any run of steps."""

  def __init__(self, train_data: ArrayDataset, val_data: ArrayDataset | None,
               batch_size: int, seed: int, eval_batch_size: int = 512):
    for name, dataset in (("train_data", train_data), ("val_data", val_data)):
      if not isinstance(dataset, ArrayDataset) and (name == "train_data" or dataset is not None):
        raise ValueError(f"{name} must be a bigtune_jax.data.ArrayDataset, got {dataset!r}")
    validation.check_int("batch_size", batch_size, 1)
    validation.check_int("eval_batch_size", eval_batch_size, 1)
    self.steps_per_epoch = train_data.steps_per_epoch(batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f"batch_size {batch_size} is larger than the training set "
                       f"({len(train_data)} examples)")
    self.num_examples, self.batch_size, self.seed = len(train_data), batch_size, seed
    self.train = {name: jnp.asarray(a) for name, a in train_data.arrays.items()}
    self.sample = {k: a[:1] for k, a in self.train.items()}
    self._val_data, self._eval_batch_size = val_data, eval_batch_size

  @functools.cached_property
  def val(self) -> dict[str, jax.Array]:
    """The validation set as padded batches ``(num_batches, batch, ...)`` on the device,
    built on first use (DARTS and a bare ``init_states`` never evaluate through it)."""
    if self._val_data is None:
      raise ValueError("this PopulationData has no validation set (val_data=None)")
    size = min(self._eval_batch_size, max(len(self._val_data), 1))
    batches = list(self._val_data.batches(size, shuffle=False, remainder="pad",
                                          process_index=0, process_count=1))
    return {k: jnp.asarray(np.stack([b[k] for b in batches])) for k in batches[0]}

  def rows(self, start: int, count: int) -> np.ndarray:
    """``(count, batch_size)`` int32 rows of steps ``start .. start + count - 1``."""
    first, last = start // self.steps_per_epoch, (start + count - 1) // self.steps_per_epoch
    used = self.steps_per_epoch * self.batch_size  # the rest of each epoch is dropped
    orders = [epoch_order(self.num_examples, seed=self.seed, epoch=e)[:used]
              for e in range(first, last + 1)]
    offset = (start - first * self.steps_per_epoch) * self.batch_size
    rows = np.concatenate(orders)[offset:offset + count * self.batch_size]
    return rows.reshape(count, self.batch_size).astype(np.int32)


_TARGET_KEYS = ("label", "y", "targets")


def model_input(data: PopulationData, input_key: str | None) -> jax.Array:
  """The first training example's model input, ``(1, ...)``: array ``input_key``, or by
  default the first array not named like a target (``label``, ``y``, ``targets``)."""
  names = [k for k in data.sample if k not in _TARGET_KEYS]
  if input_key is None and names:
    input_key = names[0]
  if input_key not in data.sample:
    raise ValueError(f"input_key must name the model input among {sorted(data.sample)}, "
                     f"got {input_key!r}")
  return data.sample[input_key]


def init_states(model: nn.Module, make_optimizer: MakeOptimizer, data: PopulationData,
                hparams: Mapping[str, jax.Array], seeds: np.ndarray, input_key: str | None):
  """The jit-compiled :func:`init_members` on ``data``'s first training example."""
  return jitted().init(model, make_optimizer, model_input(data, input_key), hparams,
                   jnp.asarray(seeds))


def train_population(model: nn.Module, loss_fn: LossFn, make_optimizer: MakeOptimizer,
                     hparams: Mapping[str, Sequence[float] | np.ndarray],
                     train_data: ArrayDataset, val_data: ArrayDataset, *, steps: int,
                     batch_size: int, eval_every: int | None = None, seed: int = 0,
                     member_seeds: Sequence[int] | None = None,
                     on_eval: Callable[[int, dict], Any] | None = None,
                     eval_batch_size: int = 512, input_key: str | None = None,
                     member_chunk: int | None = None) -> PopulationResult:
  """Trains N configurations at once (see the module docstring).

  Args:
    model: the flax module every member shares.
    loss_fn: e.g. ``bigtune_jax.train.classification_loss(model)``.
    make_optimizer: ``hparams_i -> optax.GradientTransformation``, called inside the
      vmapped program with member i's scalars (traced): build the optimizer from them.
    hparams: ``{name: N values}``, the continuous hyperparameters of the members.
    train_data, val_data: the training and validation sets.
    steps: training steps, >= 1.
    batch_size: examples per step (the same batch for every member).
    eval_every: steps between evaluations (and one after the last step); None: once per
      epoch, as in ``bt.train.FitConfig``.
    seed: the data order (as ``FitConfig.seed``) and every member's init / dropout seed.
    member_seeds: N seeds for the members' init and dropout instead of ``seed``.
    on_eval: ``on_eval(step, {"val_loss": (N,), "val_accuracy": (N,)})`` after each
      evaluation; may return a bool mask (N,) of members to stop (their state is frozen,
      the run ends when all are stopped; a stopped member still costs compute).
    eval_batch_size: examples per evaluation batch.
    input_key: the array the model takes (default: the first one not named ``label``,
      ``y`` or ``targets``), to initialize the parameters.
    member_chunk: members vmapped together, a divisor of N; None: all of them on an
      accelerator, a cache-sized chunk on a CPU (:func:`choose_chunk`).

  Returns:
    A :class:`PopulationResult`.

  Raises:
    ValueError: naming the argument, before any work.
  """
  start_time = time.time()
  values, n = check_hparams(hparams)
  check_member_optimizers(make_optimizer, values, n)
  seeds = check_seeds(member_seeds, seed, n)
  check_member_chunk(member_chunk, n)
  validation.check_int("steps", steps, 1)
  validation.check_eval_every(eval_every)
  data = PopulationData(train_data, val_data, batch_size, seed, eval_batch_size)
  eval_every = eval_every or data.steps_per_epoch
  hp = {name: jnp.asarray(v) for name, v in values.items()}
  states = init_states(model, make_optimizer, data, hp, seeds, input_key)
  chunk = member_chunk or choose_chunk(states.params)
  active = np.ones(n, bool)
  history, step = [], 0
  while step < steps and active.any():
    count = min(eval_every, steps - step)
    live = None if active.all() else jnp.asarray(active)  # no per-step select until a stop
    states, train_loss = jitted().train(loss_fn, make_optimizer, states, hp, live, data.train,
                                    jnp.asarray(data.rows(step, count)), chunk=chunk)
    step += count
    metrics = mean_metrics(jitted().evaluate(loss_fn, states.params, data.val))
    history.append({"step": step, "train_loss": np.asarray(train_loss), **metrics})
    if on_eval is not None:
      stop = on_eval(step, dict(metrics))
      if stop is not None:
        active &= ~np.asarray(stop, bool).reshape(n)
  final = {k: v for k, v in history[-1].items() if k.startswith("val_")}
  return PopulationResult(params=states.params, hparams=values, history=history, final=final,
                          steps=step, wall_s=time.time() - start_time, stopped=~active)
