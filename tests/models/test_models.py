"""Models: shapes and dtypes, parameter counts, PyTorch equivalence with copied weights,
NumPy transcriptions, GPT causality / remat / partitioning, and argument checks.

Everything runs on tiny sizes; the full-size counts (VGG-16, GPT-2 124M) come from
``jax.eval_shape``, so nothing large is allocated.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import models
from tests.utils import assert_trees_close


def _key(seed):
  # RBG keys: XLA's RngBitGenerator compiles in a fraction of threefry's time on CPU.
  return jax.random.key(seed, impl="rbg")


KEY = _key(0)
SMALL_VGG = dict(num_classes=10, width=0.125, classifier_width=32)


def _init_apply(model, x):
  """(variables, eval output); one jitted init compiles faster than op-by-op on CPU."""
  out, variables = jax.jit(model.init_with_output)(KEY, x)
  return variables, out


def _random_variables(model, x, seed=0):
  """Variables of ``model``'s shapes drawn by NumPy (no init program to compile):
  N(0, 1 / fan_in) for matrices and kernels, N(0, 0.1^2) for vectors."""
  rng = np.random.default_rng(seed)
  shapes = nn.unbox(jax.eval_shape(model.init, KEY, x))
  def draw(s):
    scale = 0.1 if len(s.shape) < 2 else 1 / math.sqrt(math.prod(s.shape[:-1]))
    return jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype)
  return jax.tree.map(draw, shapes)


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- shapes and dtypes

SHAPE_CASES = {
    "linear": (lambda: models.LinearRegression(), (4, 3), (4, 1)),
    "linear_3": (lambda: models.LinearRegression(features=3), (4, 5), (4, 3)),
    "mlp": (lambda: models.MLP(hidden=(16, 8), num_classes=10), (4, 28, 28), (4, 10)),
    "mlp_no_hidden": (lambda: models.MLP(hidden=(), num_classes=3), (4, 6), (4, 3)),
    "simple_cnn": (lambda: models.SimpleCNN(num_classes=10), (4, 28, 28, 1), (4, 10)),
    "vgg16_flatten": (lambda: models.VGG16(**SMALL_VGG, pool_size=None), (2, 32, 32, 3), (2, 10)),
    "vgg16_adaptive": (lambda: models.VGG16(**SMALL_VGG), (2, 40, 48, 3), (2, 10)),
    "lstm": (lambda: models.LSTMClassifier(hidden_size=8, num_classes=10), (4, 7, 5), (4, 10)),
    "lstm_image": (lambda: models.LSTMClassifier(hidden_size=8), (4, 28, 28, 1), (4, 10)),
}


@pytest.mark.parametrize("name", SHAPE_CASES)
def test_classifier_output_shape_and_dtype(name):
  make, in_shape, out_shape = SHAPE_CASES[name]  # shapes only: values are tested below
  x = jax.ShapeDtypeStruct(in_shape, jnp.float32)
  out, variables = jax.eval_shape(make().init_with_output, KEY, x)
  assert out.shape == out_shape and out.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


# ---------------------------------------------------------------- parameter counts

def _count(model, x):
  return models.count_params(jax.eval_shape(model.init, KEY, x))


def test_simple_cnn_has_the_seed_parameter_count():
  count = _count(models.SimpleCNN(10), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  # conv1 1*10*25+10, conv2 10*20*25+20, fc1 320*50+50, fc2 50*10+10
  assert count == 260 + 5020 + 16050 + 510 == 21_840


def test_vgg16_parameter_count_equals_torchvision():
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  assert _count(models.VGG16(num_classes=1000), x) == 138_357_544  # torchvision vgg16
  # The seed's CIFAR-10 layout (flatten 512 features), with one 4096 -> 10 head.
  convs = 14_714_688  # torchvision's vgg16().features: sum of 9 * c_in * c_out + c_out
  head = 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  assert _count(models.VGG16(num_classes=10, pool_size=None), x) == convs + head


def test_gpt2_124m_parameter_count():
  # vocab 50257 (GPT-2's tokenizer): Hugging Face's gpt2 has 124,439,808 parameters and
  # nanoGPT prints 123.65M without the position embedding.
  assert models.gpt_param_count(models.GPTConfig.gpt2_124m(vocab_size=50257)) == 124_439_808
  assert models.gpt_param_count(models.GPTConfig.gpt2_124m(vocab_size=50257),
                                non_embedding=True) == 123_653_376
  # vocab padded to 50304 (the preset): 47 more rows of 768.
  assert models.gpt_param_count(models.GPTConfig.gpt2_124m()) == 124_439_808 + 47 * 768
  assert models.gpt_param_count(models.GPTConfig.gpt2_124m()) == 124_475_904


def test_gpt_flops_per_token_is_nanogpt_formula():
  cfg = models.GPTConfig.gpt2_124m()
  n = models.gpt_param_count(cfg, non_embedding=True)
  assert models.gpt_flops_per_token(cfg) == 6 * n + 12 * 12 * 12 * 64 * 1024
  assert models.gpt_flops_per_token(cfg, seq_len=256) == 6 * n + 12 * 12 * 12 * 64 * 256


def test_count_params_on_concrete_params():
  variables = models.LinearRegression(features=2).init(KEY, jnp.ones((1, 5)))
  assert models.count_params(variables) == 5 * 2 + 2


# ---------------------------------------------------------------- PyTorch equivalence

def _torch_seed_cnn(torch):
  """Seed 000 §4.2's SimpleCNN, with the missing ``F`` import fixed."""
  F = torch.nn.functional

  class SimpleCNN(torch.nn.Module):

    def __init__(self, num_classes):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(1, 10, kernel_size=5)
      self.conv2 = torch.nn.Conv2d(10, 20, kernel_size=5)
      self.fc1 = torch.nn.Linear(320, 50)
      self.fc2 = torch.nn.Linear(50, num_classes)
      self.relu = torch.nn.ReLU()

    def forward(self, x):
      out = F.max_pool2d(self.relu(self.conv1(x)), 2)
      out = F.max_pool2d(self.relu(self.conv2(out)), 2)
      out = out.view(out.size(0), -1)
      return self.fc2(self.relu(self.fc1(out)))

  return SimpleCNN(10)


def _nchw(torch, x):
  """NHWC numpy -> NCHW torch with standard strides (a 1-channel transpose would otherwise
  look channels-last to torch, and the seed's ``view`` would fail)."""
  n, h, w, c = x.shape
  return torch.from_numpy(x.transpose(0, 3, 1, 2).reshape(-1)).reshape(n, c, h, w)


def _conv(layer):  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)
  return {"kernel": layer.weight.detach().numpy().transpose(2, 3, 1, 0),
          "bias": layer.bias.detach().numpy()}


def _dense(layer, chw=None):
  """torch (out, in) -> flax (in, out); ``chw`` reorders a (C, H, W) flatten to (H, W, C)."""
  w = layer.weight.detach().numpy()
  if chw is not None:
    w = w.reshape(w.shape[0], *chw).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
  return {"kernel": w.T, "bias": layer.bias.detach().numpy()}


def test_simple_cnn_equals_the_seed_pytorch_module():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = _torch_seed_cnn(torch).eval()
  params = {"conv1": _conv(net.conv1), "conv2": _conv(net.conv2),
            "fc1": _dense(net.fc1, chw=(20, 4, 4)), "fc2": _dense(net.fc2)}
  x = _normal(2, (3, 28, 28, 1))
  with torch.no_grad():
    expected = net(_nchw(torch, x)).numpy()
  actual = models.SimpleCNN(10).apply({"params": params}, jnp.asarray(x))
  assert_trees_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size_in", [1, 5, 7, 10, 14, 16])
def test_adaptive_avg_pool_equals_pytorch(size_in):
  torch = pytest.importorskip("torch")
  x = _normal(3, (2, size_in, size_in + 3, 4))
  expected = torch.nn.functional.adaptive_avg_pool2d(
      _nchw(torch, x), (7, 7)).numpy().transpose(0, 2, 3, 1)
  assert_trees_close(models.adaptive_avg_pool(jnp.asarray(x), 7), expected, rtol=1e-6, atol=1e-6)


def test_small_vgg16_equals_pytorch_sequential():
  """A width-1/8 VGG-16 against the same torch.nn.Sequential (as the seed builds it)."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  layers, in_ch = [], 3
  for v in models.cnn.VGG16_LAYERS:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [torch.nn.Conv2d(in_ch, v // 8, kernel_size=3, padding=1), torch.nn.ReLU()]
      in_ch = v // 8
  layers += [torch.nn.AdaptiveAvgPool2d((7, 7)), torch.nn.Flatten(),
             torch.nn.Linear(in_ch * 49, 32), torch.nn.ReLU(), torch.nn.Dropout(),
             torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Dropout(),
             torch.nn.Linear(32, 10)]
  net = torch.nn.Sequential(*layers).eval()
  convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
  denses = [m for m in net if isinstance(m, torch.nn.Linear)]
  params = {f"conv{i}": _conv(m) for i, m in enumerate(convs)}
  params |= {"fc0": _dense(denses[0], chw=(in_ch, 7, 7)), "fc1": _dense(denses[1]),
             "head": _dense(denses[2])}
  x = _normal(4, (2, 32, 32, 3))
  with torch.no_grad():
    expected = net(_nchw(torch, x)).numpy()
  actual = models.VGG16(**SMALL_VGG).apply({"params": params}, jnp.asarray(x))
  assert_trees_close(actual, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- LSTM

def _numpy_lstm_classifier(p, x):
  """float64 transcription: i, f, g, o gates; c = f c + i g; h = o tanh(c); logits = h W + b."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  cell = p["lstm"]
  sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))
  gate = lambda name, xt, h: xt @ cell["i" + name]["kernel"] + h @ cell["h" + name]["kernel"] + \
      cell["h" + name]["bias"]
  hidden = cell["hi"]["kernel"].shape[0]
  h = c = np.zeros((x.shape[0], hidden))
  for t in range(x.shape[1]):
    xt = x[:, t].astype(np.float64)
    i, f = sigmoid(gate("i", xt, h)), sigmoid(gate("f", xt, h))
    g, o = np.tanh(gate("g", xt, h)), sigmoid(gate("o", xt, h))
    c = f * c + i * g
    h = o * np.tanh(c)
  return h @ p["head"]["kernel"] + p["head"]["bias"]


@functools.cache
def _lstm():
  """(input (B, T, F) = (4, 7, 5), variables, logits) of a hidden-8, 10-class LSTM whose
  parameters are all random (Flax initializes the biases to zero, which would hide them)."""
  model, x = models.LSTMClassifier(hidden_size=8, num_classes=10), _normal(5, (4, 7, 5))
  variables = _random_variables(model, x)
  return x, variables, jax.jit(model.apply)(variables, x)


def test_lstm_returns_logits_that_match_a_numpy_transcription():
  x, variables, logits = _lstm()
  # Logits, not probabilities (the seed's softmax would make each row's exp-sum meaningless).
  assert not np.allclose(np.exp(np.asarray(logits)).sum(-1), 1.0, atol=1e-3)
  assert_trees_close(logits, _numpy_lstm_classifier(variables["params"], x), rtol=1e-5, atol=1e-6)


def test_lstm_equals_pytorch_lstm():
  torch = pytest.importorskip("torch")
  x, variables, logits = _lstm()
  cell = variables["params"]["lstm"]
  lstm, head = torch.nn.LSTM(5, 8, batch_first=True), torch.nn.Linear(8, 10)
  with torch.no_grad():  # torch stacks the gates i, f, g, o; Flax has one bias per gate
    lstm.weight_ih_l0.copy_(torch.from_numpy(np.concatenate(
        [np.asarray(cell["i" + g]["kernel"]).T for g in "ifgo"])))
    lstm.weight_hh_l0.copy_(torch.from_numpy(np.concatenate(
        [np.asarray(cell["h" + g]["kernel"]).T for g in "ifgo"])))
    lstm.bias_hh_l0.copy_(torch.from_numpy(np.concatenate(
        [np.asarray(cell["h" + g]["bias"]) for g in "ifgo"])))
    lstm.bias_ih_l0.zero_()
    head.weight.copy_(torch.from_numpy(np.array(variables["params"]["head"]["kernel"]).T))
    head.bias.copy_(torch.from_numpy(np.array(variables["params"]["head"]["bias"])))
    out, _ = lstm(torch.from_numpy(x))
    expected = head(out[:, -1, :]).numpy()
  assert_trees_close(logits, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- MLP

@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu", jnp.sin])
def test_mlp_activation_is_configurable(activation):
  fn = {"relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "tanh": np.tanh, "gelu": lambda z: 0.5 * z * (1 + _erf(z / np.sqrt(2))),
        jnp.sin: np.sin}[activation]
  model = models.MLP(hidden=(5, 4), num_classes=3, activation=activation)
  x = _normal(7, (4, 2, 3))
  variables = _random_variables(model, x)  # nonzero biases
  out = model.apply(variables, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  h = x.reshape(4, 6).astype(np.float64)
  for layer in ("hidden_0", "hidden_1"):
    h = fn(h @ p[layer]["kernel"] + p[layer]["bias"])
  assert_trees_close(out, h @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-6)


def _erf(z):
  return np.vectorize(math.erf)(z)


def test_mlp_dropout_only_when_training():
  x = jnp.asarray(_normal(8, (16, 10)))
  model = models.MLP(hidden=(64,), num_classes=3, dropout_rate=0.5)
  variables, eval_out = _init_apply(model, x)
  train_out = model.apply(variables, x, train=True, rngs={"dropout": _key(1)})
  again = model.apply(variables, x, train=True, rngs={"dropout": _key(1)})
  assert not np.allclose(train_out, eval_out)
  assert_trees_close(train_out, again)  # the 'dropout' rng decides the mask
  no_dropout = models.MLP(hidden=(64,), num_classes=3)  # same parameters, rate 0
  assert_trees_close(no_dropout.apply(variables, x, train=True), eval_out, rtol=1e-6)


def test_vgg16_dropout_only_when_training():
  model = models.VGG16(**SMALL_VGG, pool_size=None)  # dropout_rate 0.5
  x = jnp.asarray(_normal(9, (2, 32, 32, 3)))
  variables = _random_variables(model, x)
  eval_out = model.apply(variables, x)
  train_out = model.apply(variables, x, train=True, rngs={"dropout": _key(1)})
  assert not np.allclose(train_out, eval_out)
  # Rate 0, same parameters, train=True: what eval computes, so eval applies no dropout.
  no_dropout = models.VGG16(**SMALL_VGG, pool_size=None, dropout_rate=0.0)
  assert_trees_close(no_dropout.apply(variables, x, train=True), eval_out, rtol=1e-6)


# ---------------------------------------------------------------- GPT

TINY = models.GPTConfig.tiny()


@functools.cache
def _gpt_apply(config, train=False):
  """One jitted apply per configuration, compiled once for the whole file."""
  return jax.jit(functools.partial(models.GPT(config).apply, train=train))


@functools.cache
def _gpt_tiny():
  """Tiny float32 GPT: (token ids (2, 12), variables, logits)."""
  idx = jax.random.randint(_key(1), (2, 12), 0, TINY.vocab_size)
  variables, _ = _init_apply(models.GPT(TINY), idx)
  return idx, variables, _gpt_apply(TINY)(variables, idx)


def test_gpt_logits_are_float32_and_bfloat16_compute_is_close():
  idx, variables, logits = _gpt_tiny()
  assert logits.shape == (2, 12, TINY.vocab_size) and logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nn.unbox(variables)))
  bf16 = _gpt_apply(models.GPTConfig.tiny(dtype=jnp.bfloat16))(variables, idx)
  assert bf16.dtype == jnp.float32  # float32 logits whatever the compute dtype
  assert_trees_close(bf16, logits, rtol=0.0, atol=0.05)


def test_gpt_initialization_is_nanogpts():
  _, variables, _ = _gpt_tiny()
  p = nn.unbox(variables)["params"]
  assert abs(float(jnp.std(p["wte"]["embedding"])) - 0.02) < 0.002
  residual_std = 0.02 / math.sqrt(2 * TINY.n_layer)  # the projections into the residual stream
  for proj in (p["h"]["attn"]["c_proj"]["kernel"], p["h"]["mlp"]["c_proj"]["kernel"]):
    assert abs(float(jnp.std(proj)) - residual_std) < 0.1 * residual_std
  assert not np.any(p["h"]["attn"]["c_attn"]["bias"]) and np.all(p["ln_f"]["scale"] == 1)


def test_gpt_is_causal():
  idx, variables, logits = _gpt_tiny()
  changed = idx.at[:, 7:].set((idx[:, 7:] + 5) % TINY.vocab_size)
  new_logits = _gpt_apply(TINY)(variables, changed)
  assert_trees_close(new_logits[:, :7], logits[:, :7], rtol=1e-6, atol=1e-6)
  assert not np.allclose(new_logits[:, 7:], logits[:, 7:])


def test_gpt_dropout_only_when_training():
  idx, variables, logits = _gpt_tiny()
  with_dropout = models.GPTConfig.tiny(dropout=0.2)  # the same parameters
  train_out = _gpt_apply(with_dropout, train=True)(variables, idx, rngs={"dropout": _key(4)})
  assert not np.allclose(train_out, logits)
  eval_out = _gpt_apply(with_dropout)(variables, idx)
  assert_trees_close(eval_out, logits, rtol=1e-6, atol=1e-6)  # no dropout at eval


def test_gpt_remat_equals_no_remat_in_value_and_gradient():
  idx, variables, _ = _gpt_tiny()

  def value_and_grad(config):
    def loss(params):
      logits = models.GPT(config).apply({"params": params}, idx[:, :-1], train=True,
                                        rngs={"dropout": _key(3)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, idx[:, 1:]).mean()
    return jax.jit(jax.value_and_grad(loss))(nn.unbox(variables["params"]))

  plain = value_and_grad(models.GPTConfig.tiny(dropout=0.1))
  remat = value_and_grad(models.GPTConfig.tiny(dropout=0.1, remat=True))
  assert_trees_close(remat, plain, rtol=1e-5, atol=1e-6)


def test_gpt_parameters_are_scanned_and_carry_logical_axis_names():
  shapes = jax.eval_shape(models.GPT(TINY).init, KEY, jnp.zeros((1, 4), jnp.int32))
  specs = nn.get_partition_spec(shapes)["params"]
  P = jax.sharding.PartitionSpec
  assert specs["wte"]["embedding"] == P("vocab", "embed")
  assert specs["h"]["attn"]["c_attn"]["kernel"] == P("layers", "embed", None, "heads", "kv")
  assert specs["h"]["attn"]["c_proj"]["kernel"] == P("layers", "heads", "kv", "embed")
  assert specs["h"]["mlp"]["c_fc"]["kernel"] == P("layers", "embed", "mlp")
  kernel = nn.unbox(shapes)["params"]["h"]["mlp"]["c_fc"]["kernel"]
  assert kernel.shape == (TINY.n_layer, TINY.n_embd, 4 * TINY.n_embd)  # leading layer axis


def test_gpt_rejects_sequences_longer_than_block_size():
  cfg = models.GPTConfig.tiny()
  with pytest.raises(ValueError, match="block_size"):
    models.GPT(cfg).init(KEY, jnp.zeros((1, cfg.block_size + 1), jnp.int32))


def test_attention_implementation_is_chosen_by_backend(monkeypatch):
  cfg = models.GPTConfig.gpt2_124m()
  on_gpu = jax.default_backend() == "gpu"
  assert models.attention_implementation(cfg) == ("cudnn" if on_gpu else "xla")
  assert models.attention_implementation(models.GPTConfig.tiny(attention="cudnn")) == "cudnn"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.attention_implementation(cfg) == "cudnn"  # bfloat16, head size 64
  assert models.attention_implementation(models.GPTConfig.tiny()) == "xla"  # float32
  odd_heads = models.GPTConfig(n_embd=12 * 12, n_head=12)  # bfloat16, head size 12
  assert models.attention_implementation(odd_heads) == "xla"


# ---------------------------------------------------------------- argument checks

BAD_ARGUMENTS = [
    (lambda: models.LinearRegression(features=0), "features"),
    (lambda: models.MLP(activation="swish"), "activation"),
    (lambda: models.MLP(hidden=(8, 0)), r"hidden\[1\]"),
    (lambda: models.MLP(hidden=256), "hidden"),
    (lambda: models.MLP(num_classes=0), "num_classes"),
    (lambda: models.MLP(dropout_rate=1.0), "dropout_rate"),
    (lambda: models.SimpleCNN(num_classes=-1), "num_classes"),
    (lambda: models.VGG16(width=0.0), "width"),
    (lambda: models.VGG16(classifier_width=0), "classifier_width"),
    (lambda: models.VGG16(pool_size=0), "pool_size"),
    (lambda: models.LSTMClassifier(hidden_size=0), "hidden_size"),
    (lambda: models.GPTConfig(n_embd=30, n_head=4), "n_embd must be divisible by n_head"),
    (lambda: models.GPTConfig(n_layer=0), "n_layer"),
    (lambda: models.GPTConfig(vocab_size=-3), "vocab_size"),
    (lambda: models.GPTConfig(block_size=0), "block_size"),
    (lambda: models.GPTConfig(dropout=1.5), "dropout"),
    (lambda: models.GPTConfig(attention="flash"), "attention"),
    (lambda: models.GPTConfig(dtype="int8"), "dtype"),
    (lambda: models.GPTConfig(param_dtype="nope"), "param_dtype"),
    (lambda: models.GPT(models.GPTConfig.tiny()).init(KEY, jnp.zeros(4, jnp.int32)), "idx"),
    (lambda: models.gpt_flops_per_token(models.GPTConfig.tiny(), seq_len=0), "seq_len"),
]


@pytest.mark.parametrize("make, field", BAD_ARGUMENTS, ids=[f for _, f in BAD_ARGUMENTS])
def test_bad_arguments_raise_value_error_naming_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()
