"""DINet with a second, linear decoder (Sec. IV-E): linearity, branch subsets, training
outputs, the visualisation command and Table VI evaluation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinet_jax import branch_vis
from dinet_jax.models import DINet, DilatedInception, create_model
from dinet_jax.models.branch_vis import BranchDIM, TwoDecoderDINet, all_subsets

TINY = dict(architecture='two_decoders', backbone_width=8, stage_sizes=(1, 1, 1, 1),
            context_features=8, decoder_features=8, rates=(1, 2, 3))


def random_variables(model, x, seed=0):
  """He-normal kernels, identity BatchNorm (no compiled RNG: fast on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if ('scale' in name or 'var' in name) else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def tiny():
  model = create_model(TINY)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 41, 57, 3))
  return model, random_variables(model, x), x


@pytest.fixture(scope='module')
def outputs(tiny):
  """Every map the tests compare, each function compiled once."""
  model, v, x = tiny
  subsets = tuple(all_subsets(3))

  @jax.jit
  def others(v, x):
    return dict(train=model.apply(v, x, train=True), inference=model.apply(v, x),
                main=model.apply(v, x, subsets, 'main', method=TwoDecoderDINet.decode_subsets))

  # The linear maps through the command's own jitted function (its cache is reused below).
  return dict(others(v, x), linear=branch_vis.decode_subsets(model, v, x, 'linear', subsets))


def test_branch_dim_equals_the_dim():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, 6))
  dim = DilatedInception(features=4, rates=(1, 2, 4))
  v = random_variables(dim, x)
  branches = jax.jit(lambda v, x: BranchDIM(features=4, rates=(1, 2, 4)).apply(
      v, x, return_branches=True))(v, x)
  np.testing.assert_allclose(sum(branches), jax.jit(dim.apply)(v, x), rtol=1e-5, atol=1e-6)
  assert len(branches) == 3 and branches[0].shape == (2, 9, 11, 4)


def test_training_returns_both_maps_and_inference_the_main_map(tiny, outputs):
  model, v, x = tiny
  assert isinstance(model, TwoDecoderDINet)
  assert set(v['params']) == {'backbone', 'context', 'decoder', 'linear_decoder'}
  main, linear = outputs['train']
  assert main.shape == linear.shape == (2, 41, 57, 1)
  np.testing.assert_allclose(outputs['inference'], main, rtol=1e-6, atol=1e-6)
  assert float(linear.min()) < 0 < float(linear.max())  # a linear map, not a sigmoid
  # The main path is a DINet with the same parameters (checkpoints are interchangeable).
  dinet = create_model({**TINY, 'architecture': 'dinet'})
  assert isinstance(dinet, DINet)
  plain = {'params': {k: p for k, p in v['params'].items() if k != 'linear_decoder'},
           'batch_stats': v['batch_stats']}
  np.testing.assert_allclose(jax.jit(dinet.apply)(plain, x), main, rtol=1e-5, atol=1e-6)


def test_linear_decoder_decodes_sums_as_sums_of_decodes(outputs):
  maps = outputs['linear']
  assert all_subsets(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
  assert sorted(maps) == sorted(all_subsets(3))
  scale = float(jnp.max(jnp.abs(maps[(0, 1, 2)])))
  for subset, m in maps.items():
    np.testing.assert_allclose(m, sum(maps[(i,)] for i in subset), atol=2e-5 * scale)
  # All branches through the linear decoder = the linear map of training.
  np.testing.assert_allclose(maps[(0, 1, 2)], outputs['train'][1], rtol=1e-5,
                             atol=1e-6 * scale)
  # Whereas the main decoder (ReLU, sigmoid) is not additive; all of it is DINet's map.
  main = outputs['main']
  assert not np.allclose(main[(0, 1)], main[(0,)] + main[(1,)], atol=1e-3)
  np.testing.assert_allclose(main[(0, 1, 2)], outputs['inference'], rtol=1e-5, atol=1e-6)


def test_branch_decoder_orients_linear_maps(tiny, outputs):
  model, v, x = tiny
  dec = branch_vis.BranchDecoder(model, v)
  a = dec(x)
  assert list(a) == all_subsets(3)  # table order: singles, pairs, all
  flipped = jax.tree.map(lambda t: t, v)
  out = flipped['params']['linear_decoder']['out']
  flipped['params']['linear_decoder']['out'] = {'kernel': -out['kernel']}
  dec.variables = flipped
  b = dec(x)
  for subset in a:
    np.testing.assert_allclose(a[subset], b[subset], rtol=1e-5, atol=1e-5)
  full = a[(0, 1, 2)]
  assert np.all(full.sum(axis=(1, 2)) > 0)
  np.testing.assert_allclose(full, a[(0,)] + a[(1,)] + a[(2,)], rtol=1e-4, atol=1e-4)
  raw = np.asarray(outputs['linear'][(0, 1, 2)])[..., 0]
  np.testing.assert_allclose(np.abs(full), np.abs(raw), rtol=1e-5, atol=1e-5)


def test_figure_puts_labelled_panels_side_by_side():
  image = np.zeros((30, 40, 3), np.uint8)
  maps = {f'm{i}': np.random.default_rng(i).normal(size=(30, 40)) for i in range(8)}
  fig = branch_vis.figure(image, np.ones((30, 40)), maps, gap=2)
  assert fig.dtype == np.uint8 and fig.shape == (30 + 14, 10 * 40 + 9 * 2, 3)
  tall = branch_vis.figure(np.zeros((600, 800, 3), np.uint8), None, {'a': np.ones((600, 800))},
                           max_height=120)
  assert tall.shape == (120 + 14, 2 * 160 + 2, 3)


@pytest.mark.slow
def test_train_step_trains_both_decoders_with_the_same_loss(tiny, outputs):
  import optax

  from dinet_jax import losses, steps

  model, v, x = tiny
  state = steps.create_train_state(model, v, optax.adam(1e-3))
  target = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(5), (2, 41, 57, 1)))
  batch = {'image': x, 'saliency': target}
  loss_fn = losses.get_loss('linear_tvd')
  new_state, metrics = jax.jit(lambda s, b: steps.train_step(s, b, loss_fn=loss_fn))(state, batch)
  main, linear = outputs['train']
  expected = loss_fn(main, target) + loss_fn(linear, target)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
  for part in ('decoder', 'linear_decoder', 'context'):
    before, after = v['params'][part], new_state.params[part]
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before),
                                                     jax.tree.leaves(after)))


def _save_run(workdir, model, variables, image_size):
  import optax

  from dinet_jax import checkpoints, steps

  state = steps.create_train_state(model, jax.device_get(variables), optax.adam(1e-3))
  ckpts = checkpoints.RunCheckpoints(str(workdir))
  meta = {'model': TINY, 'image_size': list(image_size), 'dataset': 'saliency_popout/tiny',
          'loss': 'linear_tvd'}
  ckpts.save(jax.device_get(state), meta, best=True)
  ckpts.close()


@pytest.mark.slow
def test_command_writes_side_by_side_pngs(tmp_path):
  from PIL import Image

  model = create_model(TINY)
  v = random_variables(model, jnp.zeros((1, 48, 64, 3)))
  _save_run(tmp_path / 'run', model, v, (48, 64))
  rng = np.random.default_rng(0)
  paths = []
  for name, hw in [('a', (60, 80)), ('b', (50, 50))]:
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(tmp_path / f'{name}.png')
    Image.fromarray(rng.integers(0, 255, hw, dtype=np.uint8)).save(tmp_path / f'{name}_map.png')
    paths.append(str(tmp_path / f'{name}.png'))
  out = tmp_path / 'out'
  assert branch_vis.main(['--workdir', str(tmp_path / 'run'), '--output', str(out), *paths,
                          '--maps', *[p.replace('.png', '_map.png') for p in paths]]) == 0
  for name, hw in [('a', (60, 80)), ('b', (50, 50))]:
    with Image.open(out / f'{name}_branches.png') as im:
      # image, truth, 7 linear subsets, DINet: 10 original-size panels with 2-px gaps.
      assert im.size == (10 * hw[1] + 9 * 2, hw[0] + 14)


def test_load_run_rejects_a_plain_dinet(tmp_path):
  import optax

  from dinet_jax import checkpoints, steps

  cfg = {**TINY, 'architecture': 'dinet'}
  model = create_model(cfg)
  v = random_variables(model, jnp.zeros((1, 48, 64, 3)))
  ckpts = checkpoints.RunCheckpoints(str(tmp_path))
  ckpts.save(steps.create_train_state(model, jax.device_get(v), optax.adam(1e-3)),
             {'model': cfg, 'image_size': [48, 64]}, best=True)
  ckpts.close()
  with pytest.raises(ValueError, match='two_decoders'):
    branch_vis.load_run(str(tmp_path))


@pytest.mark.slow
def test_trained_run_visualises_and_evaluates_a_split(tmp_path):
  """Train the tiny two-decoder model for an epoch, then Fig. 5 and Table VI on it."""
  from configs import default
  from dinet_jax import training

  config = default.get_config()
  config.dataset = 'saliency_popout/tiny'
  config.data_dir = str(tmp_path / 'tfds')
  config.image_size = (48, 64)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 1
  config.eval_metrics = ('cc', 'nss')
  config.model.update({k: v for k, v in TINY.items() if k in config.model})
  config.model.architecture = 'two_decoders'
  summary = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(summary['history'][-1]['loss'])
  model, v, meta = branch_vis.load_run(str(tmp_path / 'run'))
  pngs = branch_vis.visualise_split(model, v, meta, str(tmp_path / 'out'), 'validation', 3,
                                    config.data_dir)
  assert len(pngs) == 3 and all(os.path.exists(p) for p in pngs)
  table = branch_vis.evaluate_branches(model, v, meta, 'validation', config.data_dir,
                                       ('cc', 'nss', 'kld'), batch_size=8)
  assert len(table) == 8  # 7 linear subsets + DINet's own decoder
  assert all(np.isfinite(r['cc']) for r in table.values())
  main = table['main decoder, b0(r1)+b1(r2)+b2(r3)']
  np.testing.assert_allclose(main['cc'], summary['history'][-1]['cc'], rtol=1e-4)
  assert branch_vis.format_markdown(table).count('\n') == 9
