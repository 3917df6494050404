"""`cat2000`: the CAT2000 training set (Borji and Itti, 2015).

2,000 images (1920x1080) in 20 categories of 100 each, 24 observers per
image, as the single split ``train`` (the test set's ground truth is not
public). Besides the common features, ``category`` is a ClassLabel over the
20 category folder names (`CATEGORIES`). ``image_id`` is
``<Category>/<NNN>``.

Fixations come from ``FIXATIONLOCS/<Category>/<NNN>.mat``: its one variable
(``fixLocs``) is a binary map of the image's size marking fixated pixels,
which is read as the list of its nonzero pixels (each pixel once). A variable
that is instead an N x 2 array is read as 1-based ``[x y]`` points.

Manual files (the folder as extracted, or ``trainSet.zip`` as downloaded)::

  <manual_dir>/cat2000/trainSet/Stimuli/<Category>/<NNN>.jpg
  <manual_dir>/cat2000/trainSet/FIXATIONMAPS/<Category>/<NNN>.jpg
  <manual_dir>/cat2000/trainSet/FIXATIONLOCS/<Category>/<NNN>.mat

(the ``trainSet`` level is optional). Sub-folders below a category folder
(e.g. ``Output``) are ignored.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import numpy as np
import tensorflow_datasets as tfds

from dinet_jax.datasets import common

CATEGORIES = (
    'Action', 'Affective', 'Art', 'BlackWhite', 'Cartoon', 'Fractal',
    'Indoor', 'Inverted', 'Jumbled', 'LineDrawing', 'LowResolution', 'Noisy',
    'Object', 'OutdoorManMade', 'OutdoorNatural', 'Pattern', 'Random',
    'Satelite', 'Sketch', 'Social')
NUM_IMAGES = 2000


def _norm(name: str) -> str:
  key = re.sub(r'[^a-z]', '', name.lower())
  return {'satellite': 'satelite'}.get(key, key)


_BY_KEY = {_norm(c): c for c in CATEGORIES}


def _expected(folder: str) -> str:
  return (f'  {folder}/trainSet/Stimuli/<Category>/<NNN>.jpg\n'
          f'  {folder}/trainSet/FIXATIONMAPS/<Category>/<NNN>.jpg\n'
          f'  {folder}/trainSet/FIXATIONLOCS/<Category>/<NNN>.mat\n'
          f'(or trainSet.zip; <Category> is one of {", ".join(CATEGORIES)})\n'
          'See data/README.md.')


def read_cat2000_fixations(source: common.SourceFile, height: int,
                           width: int) -> np.ndarray:
  """Fixated pixels of a FIXATIONLOCS .mat file, 0-based (row, col)."""
  mat = common.load_mat(source)
  arrays = {k: np.asarray(v) for k, v in mat.items()
            if not k.startswith('__') and isinstance(v, np.ndarray)
            and v.dtype.kind in 'biuf' and v.ndim == 2}
  if 'fixLocs' in arrays:
    arrays = {'fixLocs': arrays['fixLocs']}
  if len(arrays) != 1:
    raise common.CorruptFileError(
        f'{source.describe()}: expected one numeric 2-D variable (fixLocs), '
        f'found {sorted(arrays) or "none"}.')
  (value,) = arrays.values()
  if value.shape == (height, width):
    return np.argwhere(value != 0).astype(np.int32)
  if value.ndim == 2 and value.shape[1] == 2:
    return common.clean_fixations(common.xy1_to_rowcol0(value), height, width,
                                  source.describe())
  raise common.CorruptFileError(
      f'{source.describe()}: fixations of shape {value.shape} match neither '
      f'the image size {height}x{width} nor N x 2.')


class Cat2000(common.SaliencyBuilder):
  """CAT2000 training set: 2000 images in 20 categories."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download trainSet.zip from http://saliency.mit.edu/ (CAT2000) and '
      'place it, zipped or extracted, in the manual dir (default: data/):\n'
      + _expected('<manual_dir>/cat2000'))

  def _info(self) -> tfds.core.DatasetInfo:
    extra = {'category': tfds.features.ClassLabel(
        names=list(CATEGORIES), doc='The image category (folder name).')}
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.saliency_features(extra),
        homepage='http://saliency.mit.edu/',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    folder = common.manual_folder_from(dl_manager, 'cat2000', _expected)
    expected = _expected(str(folder))
    kinds = {'stimuli': {}, 'fixationmaps': {}, 'fixationlocs': {}}
    roots = {}
    for f in common.list_source_files(folder):
      parts = f.parts
      if len(parts) < 3:
        continue
      kind = parts[-3].lower()
      if kind not in kinds:
        continue
      category = _BY_KEY.get(_norm(parts[-2]))
      if category is None:
        raise ValueError(
            f'cat2000: unknown category folder {parts[-2]!r} '
            f'({f.describe()}); expected one of {", ".join(CATEGORIES)}.')
      path = PurePosixPath(f.name)
      suffix = path.suffix.lower()
      if kind == 'fixationlocs' and suffix != '.mat':
        continue
      if kind != 'fixationlocs' and suffix not in common.IMAGE_EXTENSIONS:
        continue
      key = f'{category}/{path.stem}'
      if key in kinds[kind]:
        raise ValueError(f'Two files for {key!r}: '
                         f'{kinds[kind][key].describe()} and {f.describe()}.'
                         ' Remove one of them.')
      kinds[kind][key] = f
      roots[kind] = '/'.join(parts[:-2])
    images = kinds['stimuli']
    if not images:
      raise common.MissingFilesError(
          f'cat2000: no images found in {folder}. Expected:\n{expected}')
    base = str(folder / PurePosixPath(roots['stimuli']).parent)
    for key in sorted(images):
      for what, kind, ext in (('fixation map', 'fixationmaps', 'jpg'),
                              ('fixation file', 'fixationlocs', 'mat')):
        if key not in kinds[kind]:
          raise common.MissingFilesError(
              f'cat2000: the image {images[key].describe()} has no {what}: '
              f'expected {base}/{kind.upper()}/{key}.{ext}.')
    for kind in ('fixationmaps', 'fixationlocs'):
      for key, f in kinds[kind].items():
        if key not in images:
          raise common.MissingFilesError(
              f'cat2000: {f.describe()} has no image: expected '
              f'{base}/Stimuli/{key}.jpg.')
    common.check_count('cat2000', 'train', len(images), NUM_IMAGES)
    items = [(key, images[key], kinds['fixationmaps'][key],
              kinds['fixationlocs'][key]) for key in sorted(images)]
    return {'train': self._generate_examples(items)}

  def _generate_examples(self, items):
    for key, image_file, map_file, locs_file in items:
      image = common.load_image(image_file)
      hw = (image.height, image.width)
      saliency = common.load_gray(map_file)
      common.check_same_size(image_file, hw, map_file, saliency.shape)
      category = key.split('/')[0]
      yield key, {
          'image': image.data,
          'saliency': common.encode_png(saliency),
          'has_saliency': True,
          'fixations': read_cat2000_fixations(locs_file, *hw),
          'image_id': key,
          'file_name': f'{category}/{image_file.name}',
          'category': category,
      }
