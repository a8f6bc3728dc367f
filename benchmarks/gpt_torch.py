"""The PyTorch baseline of ``benchmarks/gpt_step.py``: nanoGPT's model and training step.

Karpathy's nanoGPT ``model.py`` (LayerNorm with bias, fused ``c_attn``,
``F.scaled_dot_product_attention(is_causal=True)``, exact GELU, ``lm_head`` tied to
``wte``, N(0, 0.02) init with 0.02 / sqrt(2 L) on ``c_proj``) and ``train.py``'s step:
``torch.compile``d model, bfloat16 autocast, ``loss.backward()``, ``clip_grad_norm_(1.0)``,
fused AdamW (lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on matrices only), TF32 allowed.
Imported only by the worker process that times it (``gpt_step.py --worker torch``).
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):

  def __init__(self, n_embd: int, n_head: int):
    super().__init__()
    self.n_head = n_head
    self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
    self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
    self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

  def attention(self, x):
    b, t, c = x.shape
    q, k, v = self.c_attn(x).split(c, dim=2)
    q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))

  def forward(self, x):
    x = x + self.attention(self.ln_1(x))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):

  def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
    self.h = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
    self.ln_f = nn.LayerNorm(n_embd)
    self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
    self.lm_head.weight = self.wte.weight  # tied
    for name, p in self.named_parameters():
      if p.dim() == 2:
        std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
        nn.init.normal_(p, 0.0, std)
      elif name.endswith("bias"):
        nn.init.zeros_(p)

  def forward(self, idx, targets):
    pos = torch.arange(idx.shape[1], device=idx.device)
    x = self.wte(idx) + self.wpe(pos)
    for block in self.h:
      x = block(x)
    logits = self.lm_head(self.ln_f(x))
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def peak_matmul_tflops(n: int, device: torch.device, reps: int = 20) -> float:
  """bf16 ``n x n @ n x n`` rate through cuBLAS (random data), in TFLOP/s."""
  a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
  for _ in range(3):
    a @ b
  _sync(device)
  start = time.perf_counter()
  for _ in range(reps):
    a @ b
  _sync(device)
  return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def run(shape: dict, steps: int, warmup: int, window: int, matmul: int, profile: bool) -> dict:
  """Builds, warms up and times the step; returns a row (see gpt_step.py's docstring)."""
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  model = NanoGPT(shape["vocab"], shape["block"], shape["n_layer"], shape["n_head"],
                  shape["n_embd"]).to(device)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
  try:
    opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    optimizer = "AdamW fused"
  except (RuntimeError, ValueError):
    opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    optimizer = "AdamW foreach"
  compiled = torch.compile(model) if cuda else model  # nanoGPT's compile=True, on the GPU

  gen = torch.Generator(device=device).manual_seed(1)
  batches = [torch.randint(0, shape["vocab"], (shape["batch"], shape["block"] + 1),
                           device=device, generator=gen) for _ in range(4)]
  batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches]

  def step(i):
    x, y = batches[i % len(batches)]
    with torch.autocast(device.type, dtype=torch.bfloat16):
      loss = compiled(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  start = time.perf_counter()
  first_loss = float(step(0).detach())
  compile_s = time.perf_counter() - start
  for i in range(1, warmup):
    step(i)
  _sync(device)
  windows = []
  for w in range(max(steps // window, 1)):
    start = time.perf_counter()
    for i in range(window):
      loss = step(i)
    _sync(device)
    windows.append((time.perf_counter() - start) / window)
  row = {"framework": "pytorch", "variant": f"nanoGPT ({'compiled' if cuda else 'eager'}, "
         f"{optimizer})", "window_s": windows, "compile_s": compile_s,
         "first_loss": first_loss, "last_loss": float(loss.detach()),
         "peak_tflops": peak_matmul_tflops(matmul, device),
         "version": f"torch {torch.__version__}",
         "device": torch.cuda.get_device_name() if cuda else "cpu"}
  if profile and cuda:
    from benchmarks import gpt_profile
    row["profile"] = gpt_profile.torch_kernels(lambda: step(0), device)
  return row
