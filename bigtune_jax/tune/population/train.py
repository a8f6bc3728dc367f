"""The two plain entry points of the population runner (``population.runner``): whole
models (:func:`train_population`) and LoRA adapters over one frozen base
(:func:`train_adapter_population`). Both are ``runner.run_population`` with a kind of
members; PBT (``population.exploration.pbt``) is the third.

Adapter populations (seed 001 §6.4): member :math:`i` trains adapters :math:`\\theta^i` of
the ``finetune.LoRA`` over the frozen :math:`W`, held once and broadcast to every member:

.. math::
  (u^i, s^i_{t+1}) = tx(h^i)\\big(\\nabla_\\theta \\ell(W, \\theta^i_t; \\alpha^i, r^i;
  B_t), s^i_t, \\theta^i_t\\big), \\qquad \\theta^i_{t+1} = \\theta^i_t + u^i
"""

from collections.abc import Sequence, Mapping

from flax import nnx
import numpy as np

from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.train.step import LossFn
from bigtune_jax.tune.population.members import AdapterMembers
from bigtune_jax.tune.population.members import MakeOptimizer
from bigtune_jax.tune.population.members import WholeModels
from bigtune_jax.tune.population.members import members_for
from bigtune_jax.tune.population.nnx_members import NNXAdapters
from bigtune_jax.tune.population.nnx_members import NNXModels
from bigtune_jax.tune.population.refill import RefillFn
from bigtune_jax.tune.population.runner import OnEval
from bigtune_jax.tune.population.runner import PopulationResult
from bigtune_jax.tune.population.runner import run_population


def train_population(model, loss_fn: LossFn, make_optimizer: MakeOptimizer,
                     hparams: Mapping[str, Sequence[float] | np.ndarray],
                     train_data: ArrayDataset, val_data: ArrayDataset, *, steps: int,
                     batch_size: int, eval_every: int | None = None, seed: int = 0,
                     member_seeds: Sequence[int] | None = None, on_eval: OnEval | None = None,
                     compact: bool = True, eval_batch_size: int = 512,
                     input_key: str | None = None, member_chunk: int | None = None,
                     refill: RefillFn | None = None) -> PopulationResult:
  """Trains N whole models of ``model``, one configuration each, at once.

  Args:
    model: the linen module every member shares, or an NNX model factory
      ``lambda rngs: Model(..., rngs=rngs)``: member i is ``model(nnx.Rngs(seed_i))``, built
      as its solo run builds it (``population.nnx_members``); a built ``nnx.Module`` is
      refused (it holds one seed's weights).
    loss_fn: e.g. ``bigtune_jax.train.classification_loss(model)`` (NNX: of any module the
      factory builds, ``classification_loss(model(nnx.Rngs(0)))``).
    make_optimizer: ``hparams_i -> optax.GradientTransformation``, called inside the
      vmapped program with member i's scalars (traced): build the optimizer from them.
    hparams: ``{name: N values}``, the continuous hyperparameters of the members.
    train_data, val_data: ``ArrayDataset`` s (or ``TokenBlocks``); a language model's
      token ids are checked against its vocabulary, naming the split.
    steps: training steps, >= 1.
    batch_size: examples per step (the same batch for every member).
    eval_every: steps between evaluations (and one after the last step); None: once per
      epoch, as in ``bt.train.FitConfig``.
    seed: the data order (as ``FitConfig.seed``) and every member's init / dropout seed.
    member_seeds: N seeds for the members' init and dropout instead of ``seed``.
    on_eval: ``on_eval(step, {"val_loss": (N,), "val_accuracy": (N,)})`` after each
      evaluation (NaN for stopped members); may return a bool mask (N,) of members to stop.
    compact: stopped members leave the program (True), or stay in it frozen (False).
    eval_batch_size: examples per evaluation batch.
    input_key: the array the model takes (default: the first one not named ``label``,
      ``y`` or ``targets``), to initialize the parameters.
    member_chunk: members vmapped together, a divisor of N; None: all of them on an
      accelerator, a cache-sized chunk on a CPU (``programs.choose_chunk``).
    refill: ``refill(step, free) -> None | Refill | {name: values}``, called after each
      evaluation while slots are free: new members that take the slots of members stopped
      or done with their ``steps``, each at its own step 0 (``population.refill``); the
      program keeps its N slots (``compact`` has no effect) and compiles once.

  Returns:
    A ``PopulationResult`` over every member the run started, in that order
    (``result.member(i)``: member i's parameters; NNX: a new module of the factory's graph
    holding them).

  Raises:
    ValueError: naming the argument, before any work.
  """
  kind = members_for(model, loss_fn, None)
  if not isinstance(kind, (WholeModels, NNXModels)):
    raise ValueError(f"model must be a flax.linen.Module or an NNX model factory, got a "
                     f"{type(model).__name__} (LoRA adapters: train_adapter_population)")
  return run_population(
      kind, make_optimizer, hparams, train_data, val_data, steps=steps,
      batch_size=batch_size, eval_every=eval_every, seed=seed, member_seeds=member_seeds,
      on_eval=on_eval, compact=compact, eval_batch_size=eval_batch_size, input_key=input_key,
      member_chunk=member_chunk, refill=refill)


def train_adapter_population(lora: LoRA, loss_fn: LossFn, params, make_optimizer: MakeOptimizer,
                             hparams: Mapping[str, Sequence[float] | np.ndarray],
                             train_data, val_data, *, steps: int, batch_size: int,
                             eval_every: int | None = None, seed: int = 0,
                             member_seeds: Sequence[int] | None = None,
                             on_eval: OnEval | None = None, compact: bool = True,
                             eval_batch_size: int = 64, member_chunk: int | None = None,
                             refill: RefillFn | None = None) -> PopulationResult:
  """Trains N adapters of ``lora`` on the frozen ``params`` at once (module docstring).

  Args:
    lora: the ``finetune.LoRA`` (model, targets, stored rank, default alpha, dropout), or
      an NNX ``GPT`` / ``Llama`` holding ``nnx.LoRAParam`` adapters
      (``finetune.nnx_lora.add_lora``: targets, stored rank, default alpha), trained over
      its own frozen base (``population.nnx_members``).
    loss_fn: a ``bt.train`` loss of ``lora.model`` (``language_model_loss(model)``), or of
      the NNX model.
    params: the pretrained parameters, frozen and shared by all members; None for an NNX
      model (it holds them).
    make_optimizer: ``hparams_i -> optax transform``, called with traced scalars.
    hparams: ``{name: N values}``; ``alpha`` (> 0) and ``rank`` (an integer in
      ``[1, lora.rank]``) set each member's adapter; every entry reaches make_optimizer.
    train_data, val_data, steps, batch_size, eval_every, seed, member_seeds, on_eval,
      compact, eval_batch_size, member_chunk, refill: as ``train_population``.

  Returns:
    A ``PopulationResult``; ``result.member(i)`` is member i's ``finetune.Adapters``, sliced
    to its own rank with its own alpha (what ``save_peft`` and ``LoRA.merge`` take); for an
    NNX model, a new NNX model over the same base arrays holding those adapters (what
    ``save_peft`` takes).

  Raises:
    ValueError: naming the argument, before any work.
  """
  if isinstance(lora, LoRA):
    kind = AdapterMembers(lora, loss_fn)
  elif isinstance(lora, nnx.Module):
    kind = NNXAdapters.of(lora, loss_fn)
  else:
    raise ValueError(f"lora must be a bigtune_jax.finetune.LoRA or an NNX model holding LoRA "
                     f"adapters, got {lora!r}")
  return run_population(
      kind, make_optimizer, hparams, train_data, val_data,
      steps=steps, batch_size=batch_size, eval_every=eval_every, seed=seed,
      member_seeds=member_seeds, on_eval=on_eval, compact=compact, shared=params,
      eval_batch_size=eval_batch_size, member_chunk=member_chunk, refill=refill)
