"""Tests of the input pipeline: geometry, transforms, train and eval batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dinet_jax import input_pipeline as ip
from dinet_jax.datasets import fixtures

from fixtures_datasets import POPOUT, built  # noqa: F401

MEAN = np.asarray(ip.IMAGENET_MEAN, np.float32)
STD = np.asarray(ip.IMAGENET_STD, np.float32)


# ------------------------------------------------------------- geometry


@pytest.mark.parametrize('orig, target, resized, offset', [
    ((480, 640), (320, 480), (320, 426), (0, 27)),   # SALICON, as the authors.
    ((480, 640), (240, 320), (240, 320), (0, 0)),
    ((480, 640), (480, 640), (480, 640), (0, 0)),
    ((1024, 768), (320, 480), (320, 240), (0, 120)),  # Portrait.
    ((1080, 1920), (320, 480), (270, 480), (25, 0)),  # CAT2000.
    ((768, 1024), (320, 480), (320, 426), (0, 27)),   # MIT1003 landscape.
    ((10, 1000), (320, 480), (4, 480), (158, 0)),
])
def test_preprocess_geometry(orig, target, resized, offset):
  g = ip.preprocess_geometry(orig, target)
  assert g == ip.PadGeometry(resized, offset)
  (nh, nw), (top, left) = g
  assert (nh, nw, top, left) == (*resized, *offset)


def test_tf_geometry_is_the_numpy_geometry():
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 2000, size=(300, 2))
  targets = [(320, 480), (240, 320), (480, 640), (96, 128), (33, 17)]
  for target in targets:
    nh, nw, top, left = (t.numpy() for t in ip._fit_tf(  # pylint: disable=protected-access
        tf.constant(sizes[:, 0]), tf.constant(sizes[:, 1]), *target))
    for i, (h, w) in enumerate(sizes):
      (eh, ew), (et, el) = ip.preprocess_geometry((h, w), target)
      assert (nh[i], nw[i], top[i], left[i]) == (eh, ew, et, el), (h, w)


def test_resize_bilinear_matches_tf():
  rng = np.random.default_rng(1)
  x = rng.random((37, 53)).astype(np.float32)
  for out in [(80, 120), (20, 31), (37, 53), (50, 20)]:
    ref = tf.image.resize(x[..., None], out, method='bilinear',
                          antialias=False).numpy()[..., 0]
    np.testing.assert_allclose(ip.resize_bilinear(x, out), ref, atol=1e-5)


def test_undo_padding_crops_exactly():
  for orig, target in [((480, 640), (320, 480)), ((1024, 768), (320, 480)),
                       ((1080, 1920), (320, 480)), ((7, 5), (24, 40))]:
    (nh, nw), (top, left) = ip.preprocess_geometry(orig, target)
    frame = np.zeros(target, np.float32)
    frame[top:top + nh, left:left + nw] = 1.0
    out = ip.undo_padding(frame, orig, target)
    assert out.shape == orig and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0)
    # (H, W, 1) is accepted and the target defaults to the map's size.
    np.testing.assert_allclose(ip.undo_padding(frame[..., None], orig), out)


def test_map_round_trip():
  h, w = 480, 640
  yy, xx = np.mgrid[0:h, 0:w]
  smooth = 127.5 * (1 + np.sin(yy / 40.0) * np.cos(xx / 55.0))
  model_frame = ip.preprocess_map(smooth.astype(np.uint8), (320, 480))
  assert model_frame.shape == (320, 480, 1)
  assert not model_frame[:, :27].any() and not model_frame[:, 27 + 426:].any()
  back = ip.undo_padding(model_frame, (h, w), (320, 480)) * 255
  err = np.abs(back - smooth.astype(np.uint8))[4:-4, 4:-4]
  assert err.mean() < 1.0 and err.max() < 6.0


def test_normalize_image():
  x = np.array([[[0, 128, 255]]], np.uint8)
  expected = (x / 255.0 - MEAN) / STD
  np.testing.assert_allclose(ip.normalize_image(x), expected, atol=1e-6)
  np.testing.assert_allclose(ip.normalize_image(tf.constant(x)).numpy(),
                             ip.normalize_image(x), atol=1e-7)
  assert ip.normalize_image(x).dtype == np.float32


def test_preprocess_image_pads_black():
  image = np.full((480, 640, 3), 200, np.uint8)
  x = ip.preprocess_image(image, (320, 480))
  assert x.shape == (320, 480, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x[:, 0], np.broadcast_to(-MEAN / STD, (320, 3)),
                             atol=1e-6)
  np.testing.assert_allclose(x[:, 240], np.broadcast_to(
      (200 / 255 - MEAN) / STD, (320, 3)), atol=1e-5)


def test_fixation_map():
  fix = np.array([[0, 0], [479, 639], [240, 320], [240, 320]])
  m = ip.fixation_map(fix, (480, 640), (320, 480))
  assert m.shape == (320, 480, 1) and m.sum() == 4
  assert m[0, 27, 0] == 1 and m[319, 27 + 425, 0] == 1
  assert m[160, 27 + 213, 0] == 2  # Duplicates count.
  flipped = ip.fixation_map(fix, (480, 640), (320, 480), flip=True)
  np.testing.assert_array_equal(flipped[:, 27:27 + 426],
                                m[:, 27:27 + 426][:, ::-1])


# ------------------------------------------------------ training batches


def _eval_all(data_dir, name, split, size, **kw):
  batches = list(ip.create_eval_iterator(
      name, split, data_dir=data_dir, image_size=size, batch_size=4,
      num_devices=1, **kw))
  out = {k: np.concatenate([b[k] for b in batches])
         for k in batches[0] if k != 'saliency_orig'}
  keep = out['mask']
  return {k: v[keep] for k, v in out.items()}, batches


def test_train_order_sharding_and_resume(built):
  data_dir = built[0]
  size = (40, 56)
  reference, _ = _eval_all(data_dir, POPOUT, 'train', size)
  n = len(reference['image'])
  assert n == 20 == ip.num_examples(POPOUT, 'train', data_dir=data_dir)

  def run(**kw):
    args = dict(data_dir=data_dir, image_size=size, batch_size=4, seed=3,
                epoch=1, flip=False, num_devices=2)
    args.update(kw)
    return list(ip.create_train_iterator(POPOUT, 'train', **args))

  batches = run()
  assert len(batches) == 5 == ip.num_train_batches(
      POPOUT, 'train', data_dir=data_dir, batch_size=4)
  b = batches[0]
  assert set(b) == {'image', 'saliency'}
  assert b['image'].shape == (4, 40, 56, 3) and b['image'].dtype == np.float32
  assert b['saliency'].shape == (4, 40, 56, 1)
  assert b['saliency'].dtype == np.float32
  assert 0 <= b['saliency'].min() and b['saliency'].max() <= 1
  order, _ = ip.epoch_order(n, 3, 1, False)
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_allclose(images, reference['image'][order], atol=1e-6)

  # Same (seed, epoch): same batches; another epoch: another order.
  again = run()
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x['image'], y['image'])
  other = np.concatenate([b['image'] for b in run(epoch=2)])
  assert not np.allclose(other, images)

  # Resuming skips exactly `start_batch` batches.
  resumed = run(start_batch=3)
  assert len(resumed) == 2
  for x, y in zip(resumed, batches[3:]):
    np.testing.assert_array_equal(x['image'], y['image'])

  # Two processes read disjoint shards of the same permutation; the
  # incomplete last batch is dropped (10 examples each -> 2 batches of 4).
  shards = [run(process_index=p, process_count=2) for p in range(2)]
  for p, shard in enumerate(shards):
    assert len(shard) == 2 == ip.num_train_batches(
        POPOUT, 'train', data_dir=data_dir, batch_size=4, process_count=2)
    got = np.concatenate([b['image'] for b in shard])
    np.testing.assert_allclose(got, reference['image'][order[p::2][:8]],
                               atol=1e-6)


def test_flip_moves_image_map_and_fixations_together(built):
  data_dir = built[0]
  size = (48, 80)  # Wider than the 40x56 images: padded left and right.
  (nh, nw), (top, left) = ip.preprocess_geometry((40, 56), size)
  assert left > 0
  common = dict(data_dir=data_dir, image_size=size, batch_size=20, seed=5,
                epoch=0, with_fixation_maps=True, num_devices=1)
  (plain,) = ip.create_train_iterator(POPOUT, 'train', flip=False, **common)
  (flipped,) = ip.create_train_iterator(POPOUT, 'train', flip=True, **common)
  _, flips = ip.epoch_order(20, 5, 0, True)
  assert 0 < flips.sum() < 20
  content = np.s_[:, top:top + nh, left:left + nw]
  for key in ('image', 'saliency', 'fixation_map'):
    a, b = plain[key][content], flipped[key][content]
    np.testing.assert_allclose(b[flips], a[flips][:, :, ::-1], atol=1e-6)
    np.testing.assert_allclose(b[~flips], a[~flips], atol=1e-6)
    # Padding is untouched.
    np.testing.assert_allclose(flipped[key][:, :, :left],
                               plain[key][:, :, :left])
  assert (plain['fixation_map'].sum(axis=(1, 2, 3)) > 10).all()


def test_batch_size_must_divide_devices(built):
  with pytest.raises(ValueError, match='multiple'):
    next(ip.create_train_iterator(
        POPOUT, 'train', data_dir=built[0], image_size=(40, 56), batch_size=6,
        seed=0, epoch=0, num_devices=4))
  with pytest.raises(ValueError, match='multiple'):  # 4 test devices.
    next(ip.create_eval_iterator(
        POPOUT, 'validation', data_dir=built[0], image_size=(40, 56),
        batch_size=6))


# ---------------------------------------------------- evaluation batches


def test_eval_covers_every_example_once(built):
  data_dir = built[0]
  builder = tfds.builder(POPOUT, data_dir=os.fspath(data_dir))
  stored = {ex['image_id'].decode(): ex
            for ex in builder.as_data_source('validation')}
  got, batches = _eval_all(data_dir, POPOUT, 'validation', (40, 56),
                           with_originals=True)
  assert len(batches) == 3 == ip.num_eval_batches(
      POPOUT, 'validation', data_dir=data_dir, batch_size=4)
  last = batches[-1]
  np.testing.assert_array_equal(last['mask'], [True, True, False, False])
  assert sorted(got['image_id']) == sorted(stored)
  longest = max(len(ex['fixations']) for ex in stored.values())
  assert got['fixations'].shape[1:] == (longest, 2)
  for i, image_id in enumerate(got['image_id']):
    ex = stored[image_id]
    k = len(ex['fixations'])
    assert got['num_fixations'][i] == k
    np.testing.assert_array_equal(got['fixations'][i, :k], ex['fixations'])
    assert (got['fixations'][i, k:] == -1).all()
    np.testing.assert_array_equal(got['orig_size'][i], (40, 56))
    assert got['has_saliency'][i]
    assert got['fixation_map'][i].sum() == k
    np.testing.assert_allclose(got['saliency'][i], ex['saliency'] / 255.0,
                               atol=1e-6)
    np.testing.assert_allclose(
        got['image'][i], ip.normalize_image(ex['image']), atol=1e-5)
  originals = [m for b in batches for m, keep in
               zip(b['saliency_orig'], b['mask']) if keep]
  for image_id, m in zip(got['image_id'], originals):
    np.testing.assert_array_equal(m, stored[image_id]['saliency'][..., 0])
  for key, dtype in (('mask', np.bool_), ('orig_size', np.int32),
                     ('fixations', np.int32), ('num_fixations', np.int32),
                     ('image', np.float32), ('saliency', np.float32),
                     ('fixation_map', np.float32)):
    assert last[key].dtype == dtype, key


def test_eval_shards_over_processes(built):
  data_dir = built[0]
  ids = []
  for p in range(3):
    batches = list(ip.create_eval_iterator(
        POPOUT, 'validation', data_dir=data_dir, image_size=(40, 56),
        batch_size=2, process_index=p, process_count=3, num_devices=1,
        max_fixations=200))
    assert len(batches) == 2 == ip.num_eval_batches(
        POPOUT, 'validation', data_dir=data_dir, batch_size=2,
        process_count=3)
    ids += [i for b in batches for i, k in zip(b['image_id'], b['mask']) if k]
  assert len(ids) == 10 == len(set(ids))


def test_eval_max_fixations_too_small_is_an_error(built):
  with pytest.raises(tf.errors.InvalidArgumentError, match='max_fixations'):
    list(ip.create_eval_iterator(
        POPOUT, 'validation', data_dir=built[0], image_size=(40, 56),
        batch_size=2, num_devices=1, max_fixations=3))


def test_salicon_sized_batches_and_single_source_preprocessing(tmp_path):
  manual, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  exp = fixtures.write_salicon(manual, counts={'train': 2, 'val': 1},
                               size=(480, 640))
  from dinet_jax import datasets  # pylint: disable=g-import-not-at-top
  datasets.prepare('salicon/2017', data_dir, manual)
  (batch,) = ip.create_train_iterator(
      'salicon/2017', 'train', data_dir=data_dir, image_size=(320, 480),
      batch_size=2, seed=0, epoch=0, num_devices=1, with_fixation_maps=True)
  assert batch['image'].shape == (2, 320, 480, 3)
  pad = np.s_[:, :, list(range(27)) + list(range(453, 480))]
  assert not batch['saliency'][pad].any()
  assert not batch['fixation_map'][pad].any()
  np.testing.assert_allclose(batch['image'][pad],
                             np.broadcast_to(-MEAN / STD, batch['image'][pad].shape),
                             atol=1e-6)
  # The eval batch equals the stand-alone helpers on the decoded image.
  got, _ = _eval_all(data_dir, 'salicon/2017', 'validation', (320, 480))
  builder = tfds.builder('salicon/2017', data_dir=os.fspath(data_dir))
  (ex,) = builder.as_data_source('validation')
  jpeg = manual / 'salicon/images/val' / f'{exp["splits"]["validation"][0]}.jpg'
  image = ip.decode_image(jpeg)
  np.testing.assert_array_equal(image, ip.decode_image(jpeg.read_bytes()))
  # TFDS's numpy decoding (PIL) differs from TF's by a few levels.
  assert np.abs(image.astype(int) - ex['image']).max() <= 8
  np.testing.assert_allclose(got['image'][0],
                             ip.preprocess_image(image, (320, 480)),
                             atol=1e-6)
  np.testing.assert_allclose(got['saliency'][0],
                             ip.preprocess_map(ex['saliency'], (320, 480)),
                             atol=1e-6)
  stem = exp['splits']['validation'][0]
  k = int(got['num_fixations'][0])
  np.testing.assert_array_equal(got['fixations'][0, :k],
                                exp['fixations'][stem])
  np.testing.assert_array_equal(
      got['fixation_map'][0],
      ip.fixation_map(exp['fixations'][stem], (480, 640), (320, 480)))


def test_combined_splits(built):
  data_dir = built[0]
  train, val = 'fold0+fold1+fold3+fold4', 'fold2'
  n_train = ip.num_examples('mit1003/kfold5', train, data_dir=data_dir)
  n_val = ip.num_examples('mit1003/kfold5', val, data_dir=data_dir)
  assert n_train + n_val == 6
  batches = list(ip.create_train_iterator(
      'mit1003/kfold5', train, data_dir=data_dir, image_size=(32, 48),
      batch_size=n_train, seed=0, epoch=0, num_devices=1))
  assert len(batches) == 1 and batches[0]['image'].shape[0] == n_train


def test_ensure_prepared_is_reexported():
  from dinet_jax import datasets  # pylint: disable=g-import-not-at-top
  assert ip.ensure_prepared is datasets.ensure_prepared
