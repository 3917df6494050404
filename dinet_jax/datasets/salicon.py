"""`salicon`: SALICON (mouse-tracking saliency on MS COCO images).

Configs ``2015`` and ``2017`` (the LSUN'17 release); their fixations and maps
differ, and scores on the two are not comparable. Splits: ``train`` (10,000),
``validation`` (5,000, the official ``val``) and ``test`` (5,000, images only:
``has_saliency`` False, no fixations). Images are 480x640.

Manual files (folders as extracted, or the zip archives as downloaded; only
file names matter below these folders)::

  <manual_dir>/salicon/images/     COCO_{train,val,test}2014_%012d.jpg
                                   (or images.zip; shared by both configs, or
                                   put a copy in <config>/images)
  <manual_dir>/salicon/<config>/maps/       COCO_{train,val}2014_*.png
                                            (or maps.zip)
  <manual_dir>/salicon/<config>/fixations/  COCO_{train,val}2014_*.mat
                                            (or fixations.zip)

where ``<config>`` is ``2015`` or ``2017``. Each ``.mat`` file holds ``image``,
``resolution`` ([480 640]) and ``gaze``, a struct array with one entry per
observer (1xN or Nx1, flattened here) whose field ``fixations`` is an N x 2
array of 1-based ``[x y]``. All observers' fixations are concatenated and
converted to 0-based ``(row, col)``; duplicates are kept.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import tensorflow_datasets as tfds

from dinet_jax.datasets import common

_OFFICIAL_COUNTS = {'train': 10000, 'validation': 5000, 'test': 5000}
_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}
_CONFIGS = ('2015', '2017')


def _expected(folder: str, config: str) -> str:
  return (
      f'  {folder}/images/{{train,val,test}}/COCO_{{train,val,test}}2014_'
      f'<12 digits>.jpg (or {folder}/images.zip, or {folder}/{config}/images)\n'
      f'  {folder}/{config}/maps/{{train,val}}/COCO_{{train,val}}2014_'
      f'<12 digits>.png (or {folder}/{config}/maps.zip)\n'
      f'  {folder}/{config}/fixations/{{train,val}}/COCO_{{train,val}}2014_'
      f'<12 digits>.mat (or {folder}/{config}/fixations.zip)\n'
      'See data/README.md.')


def read_salicon_fixations(source: common.SourceFile, height: int,
                           width: int) -> np.ndarray:
  """All observers' fixations of a SALICON .mat file, 0-based (row, col)."""
  mat = common.load_mat(source)
  if 'gaze' not in mat:
    raise common.CorruptFileError(
        f'{source.describe()} has no `gaze` variable (found '
        f'{sorted(k for k in mat if not k.startswith("__"))}).')
  gaze = np.asarray(mat['gaze']).reshape(-1)  # 1xN or Nx1: flatten.
  if gaze.dtype.names is None or 'fixations' not in gaze.dtype.names:
    raise common.CorruptFileError(
        f'{source.describe()}: `gaze` is not a struct array with a '
        '`fixations` field.')
  points = [np.asarray(g['fixations'], dtype=np.float64) for g in gaze]
  points = [p.reshape(-1, 2) for p in points if p.size]
  if not points:
    return common.no_fixations()
  rowcol = common.xy1_to_rowcol0(np.concatenate(points, axis=0))
  return common.clean_fixations(rowcol, height, width, source.describe())


class SaliconConfig(tfds.core.BuilderConfig):
  """A SALICON release: ``2015`` or ``2017``."""


class Salicon(common.SaliencyBuilder):
  """SALICON 2015/2017: 480x640 COCO images, maps and mouse fixations."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SaliconConfig(name='2015', description='The 2015 release.'),
      SaliconConfig(name='2017', description="The LSUN'17 release."),
  ]
  DEFAULT_CONFIG_NAME = '2017'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download SALICON from http://salicon.net (images, maps and fixations '
      'of the release you want) and place them, as zip archives or '
      'extracted, in the manual dir (default: data/):\n' +
      _expected('<manual_dir>/salicon', '<config>'))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.saliency_features(),
        homepage='http://salicon.net/',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config.name
    folder = common.manual_folder_from(
        dl_manager, 'salicon', lambda f: _expected(f, config))
    expected = _expected(str(folder), config)
    other_configs = set(_CONFIGS) - {config}

    images, maps, fixations = {}, {}, {}
    for f in common.list_source_files(folder):
      parts = f.parts
      if parts[0] in other_configs:
        continue
      stem, suffix = PurePosixPath(f.name).stem, PurePosixPath(f.name).suffix
      split = common.coco_split(stem)
      if split is None:
        continue
      suffix = suffix.lower()
      in_config = parts[0] == config
      if suffix in ('.jpg', '.jpeg') or (suffix == '.png' and
                                         'images' in parts[:-1]):
        target = images
      elif suffix == '.png' and in_config:
        target = maps
      elif suffix == '.mat' and in_config:
        target = fixations
      else:
        continue
      if stem in target:
        # The same image in <config>/images and the shared images: keep the
        # config's copy; otherwise a duplicate is an error.
        if in_config == (target[stem].parts[0] == config):
          raise ValueError(f'Two files for {stem}: {target[stem].describe()} '
                           f'and {f.describe()}. Remove one of them.')
        if not in_config:
          continue
      target[stem] = f

    if not images:
      raise common.MissingFilesError(
          f'salicon/{config}: no images found in {folder}. Expected:\n'
          f'{expected}')
    for what, found in (('maps', maps), ('fixations', fixations)):
      if not found:
        raise common.MissingFilesError(
            f'salicon/{config}: no {what} found in {folder}/{config}. '
            f'Expected:\n{expected}')
    for what, found in (('saliency map', maps), ('fixation file', fixations)):
      for stem, f in found.items():
        if stem not in images:
          raise common.MissingFilesError(
              f'salicon/{config}: {f.describe()} has no image: expected '
              f'{folder}/images/{stem.split("_")[1][:-4]}/{stem}.jpg.')

    by_split = {s: [] for s in _SPLITS.values()}
    for stem in sorted(images):
      by_split[_SPLITS[common.coco_split(stem)]].append(stem)
    generators = {}
    for split, stems in by_split.items():
      if not stems:
        continue
      common.check_count('salicon', split, len(stems),
                         _OFFICIAL_COUNTS[split])
      labelled = split != 'test'
      if labelled:
        for stem in stems:
          for what, found, ext, sub in (
              ('saliency map', maps, 'png', 'maps'),
              ('fixation file', fixations, 'mat', 'fixations')):
            if stem not in found:
              coco = stem.split('_')[1][:-4]
              raise common.MissingFilesError(
                  f'salicon/{config}: the image {images[stem].describe()} '
                  f'has no {what}: expected {folder}/{config}/{sub}/{coco}/'
                  f'{stem}.{ext}.')
      items = [(stem, images[stem], maps.get(stem), fixations.get(stem))
               for stem in stems]
      generators[split] = self._generate_examples(items)
    return generators

  def _generate_examples(self, items):
    for stem, image_file, map_file, fix_file in items:
      image = common.load_image(image_file)
      hw = (image.height, image.width)
      if map_file is None:
        saliency = common.zero_map(*hw)
        fixations = common.no_fixations()
      else:
        saliency = common.load_gray(map_file)
        common.check_same_size(image_file, hw, map_file, saliency.shape)
        saliency = common.encode_png(saliency)
        fixations = read_salicon_fixations(fix_file, *hw)
      yield stem, {
          'image': image.data,
          'saliency': saliency,
          'has_saliency': map_file is not None,
          'fixations': fixations,
          'image_id': stem,
          'file_name': image_file.name,
      }
