"""Whole-model parity with the PyTorch DINet reference (benchmarks/torch_reference.py):
the converted Flax DINet gives the same maps (and the same loss gradients) on random
weights, with both convolution formulations."""

import copy
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dinet_jax import convert
from dinet_jax.models import DINet, create_model
from dinet_jax.models.layers import use_conv_impl

torch.set_num_threads(2)

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'


def _benchmark_module(name: str):
  """A module of benchmarks/ (not a package), by file name."""
  spec = importlib.util.spec_from_file_location(name, _BENCHMARKS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


torch_reference = _benchmark_module('torch_reference')


def random_torch_dinet(seed: int = 0, **kwargs) -> torch.nn.Module:
  torch.manual_seed(seed)
  net = torch_reference.TorchDINet(**kwargs)
  return torch_reference.randomize(net, seed).eval()


def torch_maps(net, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = net(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()))
  return out.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope='module')
def net():
  return random_torch_dinet(0)


@pytest.fixture(scope='module')
def variables(net):
  return convert.torch_dinet_to_flax(net.state_dict())


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)


@pytest.mark.parametrize('impl', ['xla', 'matmul'])
def test_dinet_maps_match_pytorch(net, variables, images, impl):
  expected = torch_maps(net, images)
  with use_conv_impl(impl):
    got = np.asarray(jax.jit(DINet().apply)(variables, jnp.asarray(images)))
  assert got.shape == expected.shape == (2, 64, 96, 1)
  # The maps are not saturated (else the comparison would be vacuous).
  assert 0.05 < expected.std() and 0.02 < expected.min() and expected.max() < 0.98
  err = float(np.max(np.abs(got - expected)))
  assert err <= 1e-4, err


def torch_grads(net, images, target, dtype=torch.float64):
  """Parameter gradients of mean((net(x) - target)^2) computed in ``dtype``, in the Flax
  layout."""
  net_d = copy.deepcopy(net).to(dtype)
  pred = net_d(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dtype))
  ((pred - torch.from_numpy(target.transpose(0, 3, 1, 2).copy()).to(dtype)) ** 2).mean().backward()
  # The converter maps torch names to Flax paths and transposes kernels.
  sd = {k: p.grad.float() for k, p in net_d.named_parameters()}
  sd.update({k: b.float() for k, b in net_d.named_buffers()})
  return convert.torch_dinet_to_flax(sd)['params']


def _worst_relative_error(grads, expected) -> float:
  errors = jax.tree.map(
      lambda g, e: float(np.linalg.norm(np.asarray(g) - e) / np.linalg.norm(e)),
      grads, expected)
  return max(jax.tree.leaves(errors))


@pytest.mark.parametrize('impl', ['matmul', pytest.param('xla', marks=pytest.mark.slow)])
def test_loss_gradients_match_pytorch(net, variables, images, impl):
  """Training parity: the frozen-BatchNorm gradient of every parameter agrees with the
  float64 PyTorch reference, as closely as PyTorch's own float32 gradient does.

  The loss is smooth (TVD's sign(P - Q) flips where P ~ Q under rounding), but ReLUs
  whose input is within float32 rounding of 0 flip: on this input one does in PyTorch's
  float32 (relative L2 error 4.8e-4 for the most affected parameter, the stem's
  kernel), and in the matmul formulation according to its summation order (4.8e-4 when
  it flips, 2.6e-5 when it does not). Hence the bound: float32 PyTorch's error with a
  margin, and at most 1e-3. XLA's CPU convolutions reach 4.3e-3 (the kernel gradients
  it computes as convolutions are less accurate), hence their separate tolerance.
  """
  target = np.random.default_rng(2).random((2, 64, 96, 1)).astype(np.float32)
  expected = torch_grads(net, images, target)
  torch32 = _worst_relative_error(torch_grads(net, images, target, torch.float32), expected)

  def loss(params):
    pred = DINet().apply({'params': params, 'batch_stats': variables['batch_stats']},
                         jnp.asarray(images), train=True)
    return jnp.mean((pred - target) ** 2)

  with use_conv_impl(impl):
    grads = jax.jit(jax.grad(loss))(variables['params'])
  worst = _worst_relative_error(grads, expected)
  bound = min(1e-3, max(1e-4, 1.5 * torch32)) if impl == 'matmul' else 1e-2
  assert worst < bound, (worst, torch32)


def test_benchmark_losses_agree():
  """bench_vs_torch times PyTorch on torch_reference.tvd_loss and JAX on
  losses.get_loss('linear_tvd'): the same value and gradient, so both do the same work."""
  from dinet_jax.losses import get_loss
  rng = np.random.default_rng(3)
  pred = rng.random((3, 16, 20, 1)).astype(np.float32)
  target = (rng.random((3, 16, 20, 1)) ** 4).astype(np.float32)
  value, grad = jax.value_and_grad(get_loss('linear_tvd'))(jnp.asarray(pred), jnp.asarray(target))
  pt = torch.from_numpy(pred.transpose(0, 3, 1, 2).copy()).requires_grad_()
  expected = torch_reference.tvd_loss(pt, torch.from_numpy(target.transpose(0, 3, 1, 2).copy()))
  expected.backward()
  assert 0.1 < float(expected) and abs(float(value) - float(expected)) <= 1e-6
  np.testing.assert_allclose(np.asarray(grad), pt.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-7)


def test_benchmark_figures_leave_out_the_call_after_idle():
  """bench_vs_torch's images/s come from calls 2.. of each turn; the first call after
  the pause is reported apart. A turn of one call keeps the old one-call protocol."""
  bench_vs_torch = _benchmark_module('bench_vs_torch')
  turns = [[9.0, 1.0, 2.0], [8.0, 3.0, 4.0], [7.0, 5.0, 6.0]]
  assert bench_vs_torch.steady_median(turns) == 3.5  # median of 1..6, not of 1..9
  assert bench_vs_torch.steady_median([[9.0], [1.0], [2.0]]) == 2.0


def test_stage_benchmark_truncations_match(net, variables, images):
  """bench_stages times the same truncated networks in both frameworks: its own check
  finds every truncation's output within 1e-5 of PyTorch's, and each truncation is a
  different map (the stage shapes, then the context's and the final map's)."""
  bench_stages = _benchmark_module('bench_stages')
  jt = bench_stages.jax_truncations(DINet(), variables)
  tt = bench_stages.torch_truncations(net)
  assert tuple(jt) == tuple(tt) == bench_stages.STAGES
  found = bench_stages.truncation_errors(jt, tt, images)
  assert all(err <= 1e-5 for err, _ in found.values()), found
  assert [shape for _, shape in found.values()] == [
      (2, 16, 24, 64), (2, 16, 24, 256), (2, 8, 12, 512), (2, 8, 12, 1024),
      (2, 8, 12, 2048), (2, 8, 12, 256), (2, 64, 96, 1)]
  # The check itself sees a wrong truncation: layer2 in place of layer3.
  wrong = dict(jt, layer3=jt['layer2'])
  with pytest.raises(ValueError, match=r'layer3: JAX shape \(2, 8, 12, 512\)'):
    bench_stages.truncation_errors(wrong, tt, images)
  wrong = dict(jt, stem=lambda x: jt['stem'](x) * 1.01)
  assert bench_stages.truncation_errors(wrong, tt, images)['stem'][0] > 1e-3


def test_variant_at_odd_size_converts_and_matches():
  """The baseline (1x1 context), one decoder layer, an input size that is not a multiple
  of 8 (the upsampling scale is not an integer)."""
  net = random_torch_dinet(3, rates=(), decoder_layers=1)
  model = create_model({'context': 'baseline', 'decoder_layers': 1})
  variables = convert.torch_dinet_to_flax(net.state_dict(), model)
  x = np.random.default_rng(1).standard_normal((1, 57, 83, 3)).astype(np.float32)
  got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
  expected = torch_maps(net, x)
  assert got.shape == expected.shape == (1, 57, 83, 1) and expected.std() > 0.05
  err = float(np.max(np.abs(got - expected)))
  assert err <= 1e-4, err


def test_renamed_ports_and_errors(net, variables):
  sd = {k.replace('backbone.', 'encoder.').replace('context.', 'dim.'): v
        for k, v in net.state_dict().items()}
  sd['encoder.fc.weight'] = torch.zeros(10, 2048)  # A port that kept the classifier.
  renamed = convert.torch_dinet_to_flax(sd, rename={'encoder.': 'backbone.', 'dim.': 'context.'})
  jax.tree.map(np.testing.assert_array_equal, renamed, variables)
  with pytest.raises(ValueError) as info:
    convert.torch_dinet_to_flax(sd)
  assert 'missing keys' in str(info.value) and 'unexpected keys' in str(info.value)
  with pytest.raises(ValueError, match=r'context\.branch2\.weight'):
    convert.torch_dinet_to_flax(
        {k: v for k, v in net.state_dict().items() if k != 'context.branch2.weight'})


def test_command_line_converts_a_dinet_checkpoint(tmp_path, net, variables):
  torch.save({'model': net.state_dict()}, tmp_path / 'dinet.pth')
  out = tmp_path / 'converted'
  assert convert.main(['--dinet', str(tmp_path / 'dinet.pth'), '--output', str(out)]) == 0
  jax.tree.map(np.testing.assert_array_equal, convert.load_variables(out), variables)
  assert convert.main(['--dinet', str(tmp_path / 'dinet.pth'), '--output',
                       str(tmp_path / 'x'), '--include-head']) == 2


def test_bfloat16_dinet_maps_stay_close_to_float32(variables, images):
  """The full DINet with realistic activations (converted random PyTorch weights, maps
  spread over [0.04, 0.9]): bfloat16 compute, float32 parameters and output."""
  f32 = np.asarray(jax.jit(create_model({}).apply)(variables, jnp.asarray(images)))
  bf16 = jax.jit(create_model({'dtype': 'bfloat16'}).apply)(variables, jnp.asarray(images))
  assert bf16.dtype == jnp.float32
  err = np.abs(np.asarray(bf16) - f32)
  assert float(err.max()) < 2e-2 and float(err.mean()) < 5e-3, (err.max(), err.mean())
