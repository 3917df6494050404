"""`mit300`: the 300 images of the MIT/Tuebingen saliency benchmark.

Only the ``test`` split, images only: the ground truth is not public (scores
come from submitting maps at full image size, named like the images). Every
example has ``has_saliency`` False, an all-zero ``saliency`` map and no
fixations, so that the features are the same as for the other datasets.

Manual files (the folder as extracted, or the zip archive as downloaded)::

  <manual_dir>/mit300/BenchmarkIMAGES/i<k>.jpg   (or BenchmarkIMAGES.zip)

Files in sub-folders of ``BenchmarkIMAGES`` (such as example maps) are ignored.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import tensorflow_datasets as tfds

from dinet_jax.datasets import common

NUM_IMAGES = 300


def _expected(folder: str) -> str:
  return (f'  {folder}/BenchmarkIMAGES/i1.jpg ... i300.jpg '
          '(or BenchmarkIMAGES.zip)\nSee data/README.md.')


class Mit300(common.SaliencyBuilder):
  """MIT300 benchmark images (test split, no public ground truth)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download BenchmarkIMAGES.zip from https://saliency.tuebingen.ai/ (or '
      'http://saliency.mit.edu/) and place it, zipped or extracted, in the '
      'manual dir (default: data/):\n' + _expected('<manual_dir>/mit300'))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.saliency_features(),
        homepage='https://saliency.tuebingen.ai/',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    folder = common.manual_folder_from(dl_manager, 'mit300', _expected)
    images = {}
    for f in common.list_source_files(folder):
      parts = f.parts
      # Directly inside a folder named BenchmarkIMAGES (any case).
      if len(parts) < 2 or parts[-2].lower() != 'benchmarkimages':
        continue
      path = PurePosixPath(f.name)
      if path.suffix.lower() not in common.IMAGE_EXTENSIONS:
        continue
      if path.stem in images:
        raise ValueError(f'Two files for {path.stem!r}: '
                         f'{images[path.stem].describe()} and '
                         f'{f.describe()}. Remove one of them.')
      images[path.stem] = f
    if not images:
      raise common.MissingFilesError(
          f'mit300: no images found in {folder}. Expected:\n'
          f'{_expected(str(folder))}')
    common.check_count('mit300', 'test', len(images), NUM_IMAGES)
    return {'test': self._generate_examples(
        [(k, images[k]) for k in sorted(images, key=_natural_key)])}

  def _generate_examples(self, items):
    for name, image_file in items:
      image = common.load_image(image_file)
      yield name, {
          'image': image.data,
          'saliency': common.zero_map(image.height, image.width),
          'has_saliency': False,
          'fixations': common.no_fixations(),
          'image_id': name,
          'file_name': image_file.name,
      }


def _natural_key(name: str):
  digits = ''.join(c for c in name if c.isdigit())
  return (int(digits) if digits else -1, name)
