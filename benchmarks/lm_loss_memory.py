"""Peak memory of a GPT train step: the engine's fused LM loss against full float32 logits.

``train.language_model_loss`` calls the model with ``targets=`` (the fused, chunked head of
``models/tied_head.py``); the baseline is the same model behind a wrapper without
``targets``, so the loss builds ``(B, T, V)`` float32 logits and differentiates
``log_softmax``. Both steps are compiled in the same run and read by XLA's memory analysis
(``compiled.memory_analysis()``: temporaries, arguments, outputs); nothing is executed, so
the figures are exact and the same on any machine for the same backend.

The default compute dtype is float32: XLA:CPU has no bfloat16 matrix product and converts
bfloat16 operands to float32 temporaries, which hides the difference on a CPU (pass
``--dtype bfloat16`` on a GPU). The fused path still keeps one ``(B*T, V)`` array for the
backward pass, ``P = softmax - onehot`` in the compute dtype; the logits path keeps the
float32 logits and writes their float32 gradient as well.

  python -m benchmarks.lm_loss_memory [--vocab 50304] [--n_layer 2] [--n_embd 256]
      [--batch 8] [--block 512] [--head_chunk 256] [--dtype float32] [--out FILE]
"""

import argparse
import datetime

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from bigtune_jax import models
from bigtune_jax import train


class LogitsOnly(nn.Module):
  """The model without ``targets``: the loss materializes the float32 logits."""
  inner: nn.Module

  @nn.compact
  def __call__(self, idx, *, train: bool = False):
    return self.inner(idx, train=train)


def _step_memory(model, batch) -> dict:
  sample = jnp.zeros((1, batch["inputs"].shape[1]), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), sample)["params"])
  state = jax.eval_shape(lambda p: train.create_train_state(model, p, optax.adam(1e-3)), params)
  step = jax.jit(train.make_train_step(train.language_model_loss(model)), donate_argnums=0)
  analysis = step.lower(state, batch).compile().memory_analysis()
  return {"temp_bytes": int(analysis.temp_size_in_bytes),
          "argument_bytes": int(analysis.argument_size_in_bytes),
          "output_bytes": int(analysis.output_size_in_bytes),
          "peak_bytes": int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                            + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)}


def measure(*, vocab: int, n_layer: int, n_embd: int, batch: int, block: int,
            head_chunk: int | None, dtype: str = "float32") -> dict:
  config = models.GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer,
                            n_head=max(1, n_embd // 64), n_embd=n_embd,
                            head_chunk=head_chunk, dtype=jnp.dtype(dtype))
  gpt = models.GPT(config)
  tokens = jax.ShapeDtypeStruct((batch, block), jnp.int32)
  shapes = {"inputs": tokens, "targets": tokens}
  return {"fused": _step_memory(gpt, shapes), "logits": _step_memory(LogitsOnly(gpt), shapes)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab", type=int, default=50304)
  parser.add_argument("--n_layer", type=int, default=2)
  parser.add_argument("--n_embd", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--block", type=int, default=512)
  parser.add_argument("--head_chunk", type=int, default=256)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  rows = measure(vocab=args.vocab, n_layer=args.n_layer, n_embd=args.n_embd, batch=args.batch,
                 block=args.block, head_chunk=args.head_chunk, dtype=args.dtype)
  mib = lambda b: b / 2**20  # noqa: E731
  print(f"GPT {args.n_layer}x{args.n_embd}, vocab {args.vocab}, batch {args.batch} x "
        f"{args.block} tokens, head_chunk {args.head_chunk}, {args.dtype}, "
        f"{jax.devices()[0].platform}")
  print("| loss path | temporaries MiB | arguments MiB | peak MiB |")
  print("|---|---|---|---|")
  for name, row in rows.items():
    print(f"| {name} | {mib(row['temp_bytes']):.1f} | {mib(row['argument_bytes']):.1f} | "
          f"{mib(row['peak_bytes']):.1f} |")
  ratio = rows["logits"]["peak_bytes"] / rows["fused"]["peak_bytes"]
  print(f"peak: logits path / fused path = {ratio:.2f}x")
  result = {"rows": rows, "ratio": ratio, "args": vars(args),
            "device": str(jax.devices()[0].device_kind),
            "date": datetime.date.today().isoformat(),
            "command": common.command("benchmarks.lm_loss_memory", argv)}
  common.save(args.out, result)
  return result


if __name__ == "__main__":
  main()
