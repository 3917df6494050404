"""`mit1003`: the MIT1003 eye-tracking dataset (Judd et al., 2009).

1,003 images (longest side 1024 px), 15 observers, free viewing for 3 s. Each
example has the continuous map ``<name>_fixMap.jpg`` and the fixations read
from ``<name>_fixPts.jpg``: that image marks every fixated pixel, but is
JPEG-compressed, so it is thresholded (pixel >= 128 of 255 is fixated). Each
fixated pixel therefore appears once (the MIT benchmark's convention); the
per-subject eye data in ``DATA/`` is not needed and not read.

There are no official splits. Configs:

* ``default``: ``train`` (903) and ``validation`` (100), a seeded
  deterministic split (seed 0).
* ``kfold10`` / ``kfold5``: splits ``fold0`` ... ``fold<k-1>``, disjoint and
  seeded, for k-fold cross-validation. Train on the union of the other folds
  (TFDS split syntax, e.g. ``'fold1+fold2+...'``; `kfold_splits` builds both
  strings).

A custom split is a `Mit1003Config` with its own name, e.g.
``Mit1003Config(name='val200', num_validation=200, seed=1)``.

Manual files (folders as extracted, or the zip archives as downloaded)::

  <manual_dir>/mit1003/ALLSTIMULI/<name>.jpeg         (or ALLSTIMULI.zip)
  <manual_dir>/mit1003/ALLFIXATIONMAPS/<name>_fixMap.jpg
  <manual_dir>/mit1003/ALLFIXATIONMAPS/<name>_fixPts.jpg
                                                      (or ALLFIXATIONMAPS.zip)
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

import numpy as np
import tensorflow_datasets as tfds

from dinet_jax.datasets import common

NUM_IMAGES = 1003
FIXPTS_THRESHOLD = 128


def _expected(folder: str) -> str:
  return (f'  {folder}/ALLSTIMULI/<name>.jpeg (or ALLSTIMULI.zip)\n'
          f'  {folder}/ALLFIXATIONMAPS/<name>_fixMap.jpg and '
          f'<name>_fixPts.jpg (or ALLFIXATIONMAPS.zip)\n'
          'See data/README.md.')


@dataclasses.dataclass(eq=False)
class Mit1003Config(tfds.core.BuilderConfig):
  """How MIT1003 is split.

  Attributes:
    num_folds: 0 for a train/validation split, else the number of folds
      (splits ``fold0`` ... ``fold<k-1>``).
    num_validation: validation size when ``num_folds`` is 0.
    seed: seed of the permutation of the sorted image names.
  """

  num_folds: int = 0
  num_validation: int = 100
  seed: int = 0


def split_assignment(names: list[str], config: Mit1003Config) -> dict[str, list[str]]:
  """Assigns sorted image names to splits; a pure function of the config."""
  names = sorted(names)
  order = np.random.default_rng(config.seed).permutation(len(names))
  shuffled = [names[i] for i in order]
  if config.num_folds:
    k = config.num_folds
    if not 2 <= k <= len(names):
      raise ValueError(f'mit1003: {k} folds need at least {k} images, found '
                       f'{len(names)}.')
    return {f'fold{i}': sorted(shuffled[i::k]) for i in range(k)}
  n_val = config.num_validation
  if n_val <= 0 or len(names) < 2:
    raise ValueError(f'mit1003: num_validation={n_val} for {len(names)} '
                     'images.')
  if n_val >= len(names):
    # Fewer images than the full dataset (a subset, or test fixtures): keep
    # the same validation fraction.
    n_val = min(len(names) - 1,
                max(1, round(len(names) * n_val / NUM_IMAGES)))
    common.log.warning('mit1003: %d images only; validation gets %d.',
                       len(names), n_val)
  return {'train': sorted(shuffled[n_val:]),
          'validation': sorted(shuffled[:n_val])}


def kfold_splits(num_folds: int, fold: int) -> tuple[str, str]:
  """(train, validation) split strings of fold `fold` of a k-fold config."""
  if not 0 <= fold < num_folds:
    raise ValueError(f'fold {fold} of {num_folds}.')
  train = '+'.join(f'fold{i}' for i in range(num_folds) if i != fold)
  return train, f'fold{fold}'


class Mit1003(common.SaliencyBuilder):
  """MIT1003: 1003 images with fixation maps and points (15 observers)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      Mit1003Config(name='default',
                    description='train 903 / validation 100 (seed 0).'),
      Mit1003Config(name='kfold10', num_folds=10,
                    description='10 folds fold0..fold9 (seed 0).'),
      Mit1003Config(name='kfold5', num_folds=5,
                    description='5 folds fold0..fold4 (seed 0).'),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download ALLSTIMULI.zip and ALLFIXATIONMAPS.zip from '
      'https://people.csail.mit.edu/tjudd/WherePeopleLook/ and place them, '
      'zipped or extracted, in the manual dir (default: data/):\n' +
      _expected('<manual_dir>/mit1003'))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.saliency_features(),
        homepage='https://people.csail.mit.edu/tjudd/WherePeopleLook/',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    folder = common.manual_folder_from(dl_manager, 'mit1003', _expected)
    expected = _expected(str(folder))
    images, fix_maps, fix_pts = {}, {}, {}
    for f in common.list_source_files(folder):
      parts = [p.upper() for p in f.parts[:-1]]
      path = PurePosixPath(f.name)
      if 'ALLSTIMULI' in parts:
        if path.suffix.lower() in common.IMAGE_EXTENSIONS:
          _add(images, path.stem, f)
      elif 'ALLFIXATIONMAPS' in parts:
        if path.stem.endswith('_fixMap'):
          _add(fix_maps, path.stem[:-len('_fixMap')], f)
        elif path.stem.endswith('_fixPts'):
          _add(fix_pts, path.stem[:-len('_fixPts')], f)
    if not images:
      raise common.MissingFilesError(
          f'mit1003: no images found in {folder}/ALLSTIMULI. Expected:\n'
          f'{expected}')
    maps_dir = f'{folder}/ALLFIXATIONMAPS'
    for name in sorted(images):
      for what, found, suffix in (('fixation map', fix_maps, '_fixMap'),
                                  ('fixation points', fix_pts, '_fixPts')):
        if name not in found:
          raise common.MissingFilesError(
              f'mit1003: the image {images[name].describe()} has no {what}: '
              f'expected {maps_dir}/{name}{suffix}.jpg.')
    for found in (fix_maps, fix_pts):
      for name, f in found.items():
        if name not in images:
          raise common.MissingFilesError(
              f'mit1003: {f.describe()} has no image: expected '
              f'{folder}/ALLSTIMULI/{name}.jpeg.')
    if len(images) != NUM_IMAGES:
      common.log.warning('mit1003: found %d images, the dataset has %d.',
                         len(images), NUM_IMAGES)
    splits = split_assignment(list(images), self.builder_config)
    return {
        split: self._generate_examples(
            [(n, images[n], fix_maps[n], fix_pts[n]) for n in names])
        for split, names in splits.items()
    }

  def _generate_examples(self, items):
    for name, image_file, map_file, pts_file in items:
      image = common.load_image(image_file)
      hw = (image.height, image.width)
      saliency = common.load_gray(map_file)
      common.check_same_size(image_file, hw, map_file, saliency.shape)
      pts = common.load_gray(pts_file)
      common.check_same_size(image_file, hw, pts_file, pts.shape)
      yield name, {
          'image': image.data,
          'saliency': common.encode_png(saliency),
          'has_saliency': True,
          'fixations': common.points_from_map(pts, FIXPTS_THRESHOLD),
          'image_id': name,
          'file_name': image_file.name,
      }


def _add(index: dict[str, common.SourceFile], key: str,
         f: common.SourceFile) -> None:
  if key in index:
    raise ValueError(f'Two files for {key!r}: {index[key].describe()} and '
                     f'{f.describe()}. Remove one of them.')
  index[key] = f
