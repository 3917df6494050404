"""Tests of the TFDS builders, from fixtures in the official layouts."""

from __future__ import annotations

import importlib.util
import io
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dinet_jax import datasets
from dinet_jax.baselines import centre_bias_map
from dinet_jax.datasets import fixtures, mit1003, popout, salicon
from dinet_jax.datasets import __main__ as cli

from fixtures_datasets import POPOUT, built, files_below  # noqa: F401

NAMES = ('salicon', 'mit1003', 'mit300', 'cat2000', 'saliency_popout')
COMMON = ('image', 'saliency', 'has_saliency', 'fixations', 'image_id',
          'file_name')


def _examples(data_dir, name, split):
  builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  out = {}
  for ex in builder.as_data_source(split):
    out[ex['image_id'].decode()] = ex
  return out


def _decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


def test_builders_are_registered():
  registered = tfds.list_builders(with_community_datasets=False)
  for name in NAMES:
    assert name in registered
  builder = tfds.builder('salicon/2015', data_dir='/nonexistent')
  assert builder.builder_config.name == '2015'
  assert [c.name for c in datasets.Salicon.BUILDER_CONFIGS] == ['2015', '2017']
  assert builder.info.file_format.value == 'array_record'


@pytest.mark.parametrize('name', ['salicon/2017', 'mit1003', 'mit300',
                                  'cat2000', 'saliency_popout'])
def test_common_features(name):
  reference = datasets.saliency_features()
  features = tfds.builder(name, data_dir='/nonexistent').info.features
  for key in COMMON:
    assert features[key].shape == reference[key].shape, key
    assert features[key].dtype == reference[key].dtype, key
  assert features['image'].shape == (None, None, 3)
  assert features['saliency'].shape == (None, None, 1)
  assert features['fixations'].shape == (None, 2)


def test_salicon_2017_from_archives(built):
  data_dir, manual, expected = built
  exp = expected['salicon/2017']
  builder = tfds.builder('salicon/2017', data_dir=os.fspath(data_dir))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 3, 'validation': 2, 'test': 2}
  archive = Path(manual) / 'salicon' / 'images.zip'
  for split in ('train', 'validation'):
    examples = _examples(data_dir, 'salicon/2017', split)
    assert sorted(examples) == exp['splits'][split]
    for stem, ex in examples.items():
      assert ex['has_saliency']
      assert ex['fixations'].dtype == np.int32
      np.testing.assert_array_equal(ex['fixations'], exp['fixations'][stem])
      np.testing.assert_array_equal(ex['saliency'][..., 0], exp['maps'][stem])
      assert ex['image'].shape == (48, 64, 3)
      assert ex['file_name'].decode() == stem + '.jpg'
      split_dir = stem.split('_')[1][:-4]
      with zipfile.ZipFile(archive) as z:
        jpeg = _decode(z.read(f'images/{split_dir}/{stem}.jpg'))
      if jpeg.ndim == 2:  # The grayscale image is stored as RGB.
        jpeg = np.repeat(jpeg[..., None], 3, axis=2)
      np.testing.assert_array_equal(ex['image'], jpeg)
  test = _examples(data_dir, 'salicon/2017', 'test')
  assert sorted(test) == exp['splits']['test']
  for ex in test.values():
    assert not ex['has_saliency']
    assert ex['fixations'].shape == (0, 2)
    assert ex['saliency'].shape == (48, 64, 1) and not ex['saliency'].any()


def test_salicon_2015_column_gaze_and_shared_images(built):
  data_dir, _, expected = built
  exp = expected['salicon/2015']
  examples = _examples(data_dir, 'salicon/2015', 'train')
  for stem, ex in examples.items():
    np.testing.assert_array_equal(ex['fixations'], exp['fixations'][stem])
  # Same images as 2017 (shared folder), different fixations.
  other = _examples(data_dir, 'salicon/2017', 'train')
  assert sorted(examples) == sorted(other)
  stem = sorted(examples)[1]
  np.testing.assert_array_equal(examples[stem]['image'], other[stem]['image'])
  assert (examples[stem]['fixations'].shape != other[stem]['fixations'].shape
          or not np.array_equal(examples[stem]['fixations'],
                                other[stem]['fixations']))


def test_salicon_gaze_struct_orientation(tmp_path):
  exp = fixtures.write_salicon(tmp_path, counts={'train': 1},
                               gaze_orientation='col', observers=4)
  (stem,) = exp['splits']['train']
  files = datasets.common.list_source_files(tmp_path / 'salicon')
  (mat,) = [f for f in files if f.name.endswith('.mat')]
  got = salicon.read_salicon_fixations(mat, 48, 64)
  np.testing.assert_array_equal(got, exp['fixations'][stem])


def test_mit1003_splits_and_fixations(built):
  data_dir, _, expected = built
  exp = expected['mit1003']
  train = _examples(data_dir, 'mit1003', 'train')
  val = _examples(data_dir, 'mit1003', 'validation')
  assert not set(train) & set(val)
  assert sorted(set(train) | set(val)) == sorted(exp['names'])
  for name, ex in {**train, **val}.items():
    np.testing.assert_array_equal(ex['fixations'], exp['fixations'][name])
    np.testing.assert_array_equal(ex['saliency'][..., 0], exp['maps'][name])
    assert ex['image'].shape[:2] == exp['sizes'][name]
  folds = [set(_examples(data_dir, 'mit1003/kfold5', f'fold{i}'))
           for i in range(5)]
  assert sum(len(f) for f in folds) == len(exp['names'])
  assert set().union(*folds) == set(exp['names'])
  train_split, val_split = datasets.kfold_splits(5, 2)
  assert val_split == 'fold2'
  assert train_split == 'fold0+fold1+fold3+fold4'
  builder = tfds.builder('mit1003/kfold5', data_dir=os.fspath(data_dir))
  assert (builder.info.splits[train_split].num_examples +
          builder.info.splits[val_split].num_examples == len(exp['names']))


def test_mit1003_split_assignment_full_size():
  names = [f'img{i:04d}' for i in range(1003)]
  config = datasets.Mit1003Config(name='x')
  splits = mit1003.split_assignment(names, config)
  assert len(splits['train']) == 903 and len(splits['validation']) == 100
  assert splits == mit1003.split_assignment(list(reversed(names)), config)
  other = mit1003.split_assignment(
      names, datasets.Mit1003Config(name='y', seed=1))
  assert other['validation'] != splits['validation']
  folds = mit1003.split_assignment(
      names, datasets.Mit1003Config(name='k', num_folds=10))
  assert sorted(len(v) for v in folds.values()) == [100] * 7 + [101] * 3
  assert sorted(sum(folds.values(), [])) == names


def test_mit300_images_only(built):
  data_dir, _, expected = built
  examples = _examples(data_dir, 'mit300', 'test')
  assert list(examples) == expected['mit300']['names']  # Natural order.
  for ex in examples.values():
    assert not ex['has_saliency'] and not ex['saliency'].any()
    assert ex['fixations'].shape == (0, 2)
  builder = tfds.builder('mit300', data_dir=os.fspath(data_dir))
  assert list(builder.info.splits) == ['test']


def test_cat2000_categories_and_fixations(built):
  data_dir, _, expected = built
  exp = expected['cat2000']
  examples = _examples(data_dir, 'cat2000', 'train')
  assert sorted(examples) == sorted(exp['ids'])
  names = tfds.builder('cat2000', data_dir=os.fspath(data_dir)).info.features[
      'category'].names
  assert len(names) == 20
  for key, ex in examples.items():
    assert names[ex['category']] == exp['categories'][key]
    np.testing.assert_array_equal(ex['fixations'], exp['fixations'][key])
    assert ex['image'].shape == (27, 48, 3)
    assert ex['file_name'].decode() == key + '.jpg'


def test_popout_is_deterministic_and_stored_losslessly(built):
  data_dir, _, _ = built
  config = tfds.builder(POPOUT, data_dir='/nonexistent').builder_config
  assert config.image_size == (40, 56) and config.num_train == 20
  a = popout.make_example(config, 'validation', 3)
  b = popout.make_example(config, 'validation', 3)
  for key in ('image', 'saliency', 'fixations', 'target'):
    np.testing.assert_array_equal(a[key], b[key])
  c = popout.make_example(config, 'validation', 4)
  assert not np.array_equal(a['image'], c['image'])
  stored = _examples(data_dir, POPOUT, 'validation')
  assert len(stored) == 10
  ex = stored['validation_000003']
  np.testing.assert_array_equal(ex['image'], a['image'])
  np.testing.assert_array_equal(ex['saliency'], a['saliency'])
  np.testing.assert_array_equal(ex['fixations'], a['fixations'])
  assert ex['has_saliency']
  builder = tfds.builder(POPOUT, data_dir=os.fspath(data_dir))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 20, 'validation': 10, 'test': 6}


def _cc(a, b):
  a = (a - a.mean()) / a.std()
  b = (b - b.mean()) / b.std()
  return float((a * b).mean())


def test_popout_centre_bias_is_a_weak_baseline():
  """The default config: centre bias CC low, target anywhere, maps learnable."""
  config = tfds.builder('saliency_popout', data_dir='/nonexistent'
                        ).builder_config
  h, w = config.image_size
  assert (h, w) == (96, 128)
  examples = [popout.make_example(config, 'validation', i) for i in range(60)]
  maps = [e['saliency'][..., 0].astype(np.float64) for e in examples]
  baseline = centre_bias_map(h, w).astype(np.float64)
  cc_centre = np.mean([_cc(baseline, m) for m in maps])
  assert cc_centre < 0.3
  # An oracle that knows where the target is explains the maps well.
  oracle = []
  for e, m in zip(examples, maps):
    blob = popout.fixation_density(np.array([e['target']]), h, w, 4.0)
    oracle.append(_cc(blob.astype(np.float64), m))
  assert np.mean(oracle) > 0.7
  targets = np.array([e['target'] for e in examples])
  assert np.ptp(targets[:, 0]) > 0.6 * h and np.ptp(targets[:, 1]) > 0.6 * w
  for e in examples:
    f = e['fixations']
    assert f.dtype == np.int32 and f.shape[1] == 2 and len(f) > 10
    assert (f >= 0).all() and (f[:, 0] < h).all() and (f[:, 1] < w).all()
  assert {e['odd_feature'] for e in examples} == set(popout.ODD_FEATURES)


def test_centre_bias_map():
  m = centre_bias_map(9, 12)
  assert m.shape == (9, 12) and m.dtype == np.float32
  assert m.max() == pytest.approx(1.0, abs=0.01)
  np.testing.assert_allclose(m, m[::-1, ::-1], rtol=1e-6)
  assert m[4, 5] > m[0, 0]


# ---------------------------------------------------------------- errors


def _build(name, data_dir, manual):
  return datasets.prepare(name, data_dir, manual)


def test_missing_manual_folder_names_expected_files(tmp_path):
  with pytest.raises(datasets.MissingFilesError) as e:
    _build('salicon/2017', tmp_path / 'tfds', tmp_path / 'manual')
  message = str(e.value)
  assert str(tmp_path / 'manual' / 'salicon') in message
  assert 'images.zip' in message and 'fixations' in message
  assert 'images/{train,val,test}/COCO_' in message
  assert '<manual_dir>' not in message
  assert not (tmp_path / 'tfds').exists()  # Nothing left behind.


def test_missing_map_names_image_and_map(tmp_path):
  manual = tmp_path / 'manual'
  exp = fixtures.write_salicon(manual, counts={'train': 2, 'val': 1})
  stem = exp['splits']['train'][1]
  (manual / 'salicon/2017/maps/train' / f'{stem}.png').unlink()
  with pytest.raises(datasets.MissingFilesError) as e:
    _build('salicon/2017', tmp_path / 'tfds', manual)
  message = str(e.value)
  assert str(manual / 'salicon/images/train' / f'{stem}.jpg') in message
  assert str(manual / 'salicon/2017/maps/train' / f'{stem}.png') in message
  assert files_below(tmp_path / 'tfds') == []


def test_missing_fixpts_names_both(tmp_path):
  manual = tmp_path / 'manual'
  exp = fixtures.write_mit1003(manual, num_images=3)
  name = exp['names'][0]
  (manual / 'mit1003/ALLFIXATIONMAPS' / f'{name}_fixPts.jpg').unlink()
  with pytest.raises(datasets.MissingFilesError) as e:
    _build('mit1003', tmp_path / 'tfds', manual)
  assert f'{name}.jpeg' in str(e.value) and f'{name}_fixPts.jpg' in str(e.value)


def test_truncated_image_names_file_and_leaves_nothing(tmp_path):
  manual, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  exp = fixtures.write_cat2000(manual)
  key = exp['ids'][1]
  image = manual / 'cat2000/trainSet/Stimuli' / f'{key}.jpg'
  image.write_bytes(image.read_bytes()[:200])
  with pytest.raises(datasets.CorruptFileError) as e:
    _build('cat2000', data_dir, manual)
  assert str(image) in str(e.value)
  assert not data_dir.exists()
  # A clean build works afterwards.
  shutil.rmtree(manual)
  fixtures.write_cat2000(manual)
  builder = _build('cat2000', data_dir, manual)
  assert builder.info.splits['train'].num_examples == 4


def test_map_size_mismatch_names_both(tmp_path):
  manual = tmp_path / 'manual'
  exp = fixtures.write_salicon(manual, counts={'train': 1})
  (stem,) = exp['splits']['train']
  path = manual / 'salicon/2017/maps/train' / f'{stem}.png'
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)
  with pytest.raises(datasets.CorruptFileError) as e:
    _build('salicon/2017', tmp_path / 'tfds', manual)
  assert str(path) in str(e.value) and f'{stem}.jpg' in str(e.value)


# ------------------------------------------------- preparing and commands


def test_ensure_prepared(tmp_path, built):
  data_dir, manual, _ = built
  assert datasets.ensure_prepared('mit300', data_dir).info.splits[
      'test'].num_examples == 3
  empty = tmp_path / 'tfds'
  with pytest.raises(datasets.DatasetNotPreparedError) as e:
    datasets.ensure_prepared('salicon/2017', empty, manual)
  message = str(e.value)
  commands = [line.strip() for line in message.splitlines()
              if line.strip().startswith(('python ', 'tfds '))]
  assert len(commands) == 2
  assert commands[1].startswith('tfds build salicon --config 2017 '
                                '--imports dinet_jax.datasets')
  # The printed `python -m dinet_jax.datasets` command works as printed.
  argv = shlex.split(commands[0])
  assert argv[:3] == ['python', '-m', 'dinet_jax.datasets']
  assert cli.main(argv[3:]) == 0
  builder = datasets.ensure_prepared('salicon/2017', empty, manual)
  assert builder.info.splits['train'].num_examples == 3
  # Generated datasets are built on demand.
  generated = datasets.ensure_prepared('saliency_popout/24x32_4-2-2', empty)
  assert generated.info.splits['validation'].num_examples == 2
  with pytest.raises(ValueError):
    datasets.ensure_prepared('nonexistent', empty)


# TFDS 4.9.10's `tfds` command imports Apache Beam and mlcroissant (and
# their dependencies) at start-up, even for `tfds build`, but does not
# depend on them; `python -m dinet_jax.datasets build` needs neither.
_CLI_MODULES = ('apache_beam', 'mlcroissant')


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in _CLI_MODULES),
    reason='the tfds command needs apache-beam and mlcroissant installed')
def test_tfds_build_command(tmp_path):
  manual, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  fixtures.write_mit300(manual)
  tfds_cli = Path(sys.executable).parent / 'tfds'
  result = subprocess.run(
      [os.fspath(tfds_cli), 'build', 'mit300', '--imports',
       'dinet_jax.datasets', '--manual_dir', os.fspath(manual), '--data_dir',
       os.fspath(data_dir)], capture_output=True, text=True, timeout=300,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-3000:]
  builder = tfds.builder('mit300', data_dir=os.fspath(data_dir))
  assert builder.info.splits['test'].num_examples == 3
  assert builder.info.file_format.value == 'array_record'
  assert not (data_dir / 'downloads').exists()
