"""Weight conversion: parity with torchvision's ResNet-50 on random weights, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from dinet_jax import convert
from dinet_jax.models import ResNet50

torch.set_num_threads(2)


def random_torchvision_resnet50(dilated: bool, seed: int = 0) -> torch.nn.Module:
  """torchvision ResNet-50 with random weights and randomised BatchNorm statistics.

  BatchNorm scales are drawn below 1 so that the last features have the magnitude of a
  trained network's (max ~10s, not ~100s): a 1e-4 absolute tolerance then tests the
  layout, not float32 rounding of huge activations.
  """
  torch.manual_seed(seed)
  net = torchvision.models.resnet50(
      weights=None, replace_stride_with_dilation=[False, dilated, dilated])
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.4, 1.0)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, torch.nn.Linear):
        m.bias.uniform_(-0.1, 0.1)
  return net.eval()


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  return rng.standard_normal((2, 3, 241, 321)).astype(np.float32)


def torch_features(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    t = torch.from_numpy(x)
    t = net.maxpool(net.relu(net.bn1(net.conv1(t))))
    t = net.layer4(net.layer3(net.layer2(net.layer1(t))))
  return t.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize('dilated', [True, False])
def test_feature_maps_match_torchvision(dilated, images):
  net = random_torchvision_resnet50(dilated, seed=int(dilated))
  variables = convert.torchvision_resnet50_to_flax(net.state_dict())
  expected = torch_features(net, images)
  got = ResNet50(dilated=dilated).apply(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  assert got.shape == expected.shape == ((2, 31, 41, 2048) if dilated else (2, 8, 11, 2048))
  err = float(np.max(np.abs(np.asarray(got) - expected)))
  assert err <= 1e-4, err


def test_classifier_logits_match_torchvision(images):
  net = random_torchvision_resnet50(False, seed=3)
  variables = convert.torchvision_resnet50_to_flax(net.state_dict(), include_head=True)
  with torch.no_grad():
    expected = net(torch.from_numpy(images)).numpy()
  got = ResNet50(dilated=False, num_classes=1000).apply(
      variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


@pytest.fixture(scope='module')
def state_dict():
  return random_torchvision_resnet50(False, seed=5).state_dict()


def test_wrapped_and_prefixed_checkpoints_load_from_files(tmp_path, state_dict):
  plain = convert.torchvision_resnet50_to_flax(state_dict)
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in state_dict.items()}},
             tmp_path / 'wrapped.pth')
  loaded = convert.torchvision_resnet50_to_flax(tmp_path / 'wrapped.pth')
  jax.tree.map(np.testing.assert_array_equal, loaded, plain)
  w = state_dict['layer2.1.conv2.weight'].numpy()
  np.testing.assert_array_equal(plain['params']['layer2_1']['conv2']['kernel'],
                                w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(plain['batch_stats']['layer3_0']['downsample_bn']['var'],
                                state_dict['layer3.0.downsample.1.running_var'].numpy())


def test_missing_unexpected_and_misshaped_keys_are_all_listed(state_dict):
  sd = dict(state_dict)
  del sd['layer1.0.bn1.running_mean']
  sd['layer9.0.conv1.weight'] = torch.zeros(1)
  sd['conv1.weight'] = torch.zeros(64, 3, 5, 5)
  with pytest.raises(ValueError) as info:
    convert.torchvision_resnet50_to_flax(sd)
  msg = str(info.value)
  assert 'missing keys (1): layer1.0.bn1.running_mean' in msg
  assert 'unexpected keys (1): layer9.0.conv1.weight' in msg
  assert 'conv1.weight: checkpoint (64, 3, 5, 5)' in msg


def test_non_checkpoint_file_gets_a_clear_error(tmp_path):
  bad = tmp_path / 'notes.pth'
  bad.write_text('this is not a checkpoint')
  with pytest.raises(ValueError, match='notes.pth.*not a readable PyTorch checkpoint'):
    convert.torchvision_resnet50_to_flax(bad)
  with pytest.raises(FileNotFoundError, match='nowhere.pth'):
    convert.torchvision_resnet50_to_flax(tmp_path / 'nowhere.pth')


def test_command_line_writes_orbax_weights_that_load_back(tmp_path, state_dict):
  torch.save(state_dict, tmp_path / 'resnet50.pth')
  out = tmp_path / 'converted'
  assert convert.main(['--torchvision', str(tmp_path / 'resnet50.pth'),
                       '--output', str(out)]) == 0
  restored = convert.load_variables(out)
  expected = convert.torchvision_resnet50_to_flax(state_dict)
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  # A second run without --overwrite refuses and leaves the weights intact.
  assert convert.main(['--torchvision', str(tmp_path / 'resnet50.pth'),
                       '--output', str(out)]) == 2
  jax.tree.map(np.testing.assert_array_equal, convert.load_variables(out), expected)
