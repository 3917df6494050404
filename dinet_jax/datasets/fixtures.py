"""Small synthetic copies of the public datasets, in their official layouts.

For tests and benchmarks: the files are real JPEG/PNG images and real MATLAB
``.mat`` structs (written with scipy) laid out as the datasets are
distributed, optionally as zip archives, so that the builders are exercised
on the formats they will meet. Each writer returns the values a builder
should produce (fixations as 0-based (row, col), maps, split membership).
Nothing here is downloaded.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image


def synthetic_photo(rng: np.random.Generator, height: int, width: int,
                    grayscale: bool = False) -> np.ndarray:
  """A photo-like uint8 image: smooth colour blobs plus fine texture."""
  low = rng.uniform(0, 255, (max(2, height // 32), max(2, width // 32), 3))
  img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize(
      (width, height), Image.BICUBIC), dtype=np.float64)
  img += rng.normal(0, 12, (height, width, 3))
  img = np.clip(img, 0, 255).astype(np.uint8)
  if grayscale:
    return img.mean(axis=2).astype(np.uint8)
  return img


def smooth_map(rng: np.random.Generator, height: int, width: int,
               points: np.ndarray) -> np.ndarray:
  """A uint8 (H, W) map: Gaussian blobs at the given (row, col) points."""
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  m = np.zeros((height, width))
  pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
  np.add.at(m, (pts[:, 0], pts[:, 1]), 1.0)
  sigma = max(2.0, min(height, width) / 30)
  m = scipy.ndimage.gaussian_filter(m, sigma, mode='constant', truncate=3.0)
  m += 0.05 * rng.random() * m.max()
  peak = m.max()
  return np.round(255 * m / peak).astype(np.uint8) if peak > 0 else \
      m.astype(np.uint8)


def _jpeg(array: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _mat(data: dict[str, Any]) -> bytes:
  buf = io.BytesIO()
  scipy.io.savemat(buf, data)
  return buf.getvalue()


class _Writer:
  """Writes files into a folder, or collects them into zip archives."""

  def __init__(self, root: Path, archives: dict[str, str] | None = None):
    self.root = Path(root)
    self.archives = archives or {}  # folder prefix -> archive path
    self._zips: dict[str, zipfile.ZipFile] = {}

  def write(self, rel: str, data: bytes) -> None:
    for prefix, archive in self.archives.items():
      if rel.startswith(prefix + '/'):
        if archive not in self._zips:
          path = self.root / archive
          path.parent.mkdir(parents=True, exist_ok=True)
          self._zips[archive] = zipfile.ZipFile(path, 'w')
        # Members are relative to the archive's folder.
        member = os.path.relpath(rel, os.path.dirname(archive) or '.')
        self._zips[archive].writestr(member, data)
        return
    path = self.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

  def close(self) -> None:
    for z in self._zips.values():
      z.close()


def random_points(rng: np.random.Generator, n: int, height: int,
                  width: int) -> np.ndarray:
  """n distinct (row, col) pixels, int64."""
  flat = rng.choice(height * width, size=n, replace=False)
  return np.stack([flat // width, flat % width], axis=1)


def write_salicon(manual_dir: os.PathLike, *, config: str = '2017',
                  counts: dict[str, int] | None = None,
                  size: tuple[int, int] = (48, 64),
                  gaze_orientation: str = 'row', archives: bool = False,
                  grayscale_first: bool = False, observers: int = 3,
                  seed: int = 0, jpeg_quality: int = 90,
                  with_images: bool = True) -> dict[str, Any]:
  """Writes SALICON files under ``<manual_dir>/salicon``.

  Layout: ``images/{train,val,test}/COCO_<split>2014_<12 digits>.jpg``,
  ``<config>/maps/{train,val}/*.png`` and ``<config>/fixations/{train,val}/
  *.mat`` (``image``, ``resolution``, and ``gaze``: a 1 x N
  (``gaze_orientation='row'``) or N x 1 (``'col'``) struct array of
  observers with ``location``, ``timestamp`` and ``fixations`` as 1-based
  [x y]). With `archives`, ``images.zip``, ``<config>/maps.zip`` and
  ``<config>/fixations.zip`` instead of folders.

  Returns:
    {'splits': {tfds split: [stems]}, 'fixations': {stem: (N, 2) 0-based
    (row, col)}, 'maps': {stem: uint8 (H, W)}, 'images': {stem: uint8}}.
  """
  counts = counts or {'train': 3, 'val': 2, 'test': 2}
  rng = np.random.default_rng(seed)
  root = Path(manual_dir) / 'salicon'
  writer = _Writer(root, {
      'images': 'images.zip', f'{config}/maps': f'{config}/maps.zip',
      f'{config}/fixations': f'{config}/fixations.zip'} if archives else None)
  h, w = size
  out = {'splits': {}, 'fixations': {}, 'maps': {}, 'images': {}}
  image_id = 1
  for split, n in counts.items():
    tfds_split = {'val': 'validation'}.get(split, split)
    out['splits'][tfds_split] = []
    for i in range(n):
      stem = f'COCO_{split}2014_{image_id:012d}'
      image_id += 7
      gray = grayscale_first and i == 0
      image = synthetic_photo(rng, h, w, grayscale=gray)
      if with_images:
        writer.write(f'images/{split}/{stem}.jpg', _jpeg(image, jpeg_quality))
      out['images'][stem] = image
      out['splits'][tfds_split].append(stem)
      if split == 'test':
        continue
      per_observer = [random_points(rng, int(rng.integers(0, 5)), h, w)
                      for _ in range(observers)]
      per_observer[0] = random_points(rng, 4, h, w)  # At least some.
      dtype = [('location', 'O'), ('timestamp', 'O'), ('fixations', 'O')]
      shape = (1, observers) if gaze_orientation == 'row' else (observers, 1)
      gaze = np.zeros(shape, dtype=dtype)
      for k, pts in enumerate(per_observer):
        xy = np.stack([pts[:, 1] + 1, pts[:, 0] + 1], axis=1).astype(np.float64)
        entry = gaze.reshape(-1)[k]
        entry['fixations'] = xy if len(xy) else np.zeros((0, 0))
        entry['location'] = xy + rng.normal(0, 0.5, xy.shape)
        entry['timestamp'] = np.arange(len(xy), dtype=np.float64)[:, None]
      writer.write(f'{config}/fixations/{split}/{stem}.mat', _mat({
          'image': stem, 'resolution': np.array([[h, w]], dtype=np.uint16),
          'gaze': gaze}))
      all_points = np.concatenate(per_observer).astype(np.int32)
      saliency = smooth_map(rng, h, w, all_points)
      writer.write(f'{config}/maps/{split}/{stem}.png', _png(saliency))
      out['fixations'][stem] = all_points
      out['maps'][stem] = saliency
  writer.close()
  return out


def write_mit1003(manual_dir: os.PathLike, *, num_images: int = 6,
                  sizes: tuple[tuple[int, int], ...] = ((48, 64), (64, 48),
                                                        (40, 72)),
                  archives: bool = False, seed: int = 0,
                  fixpts_quality: int = 90) -> dict[str, Any]:
  """Writes MIT1003 files under ``<manual_dir>/mit1003``.

  ``ALLSTIMULI/<name>.jpeg`` and ``ALLFIXATIONMAPS/<name>_fixMap.jpg`` (a
  grayscale JPEG) and ``<name>_fixPts.jpg`` (white fixated pixels on black,
  JPEG-compressed); with `archives`, ``ALLSTIMULI.zip`` and
  ``ALLFIXATIONMAPS.zip`` (each holding its folder).

  Returns:
    {'names': [...], 'fixations': {name: sorted (N, 2) (row, col)},
    'maps': {name: uint8 map as decoded from its JPEG}, 'sizes': {name: hw}}.
  """
  rng = np.random.default_rng(seed)
  root = Path(manual_dir) / 'mit1003'
  writer = _Writer(root, {'ALLSTIMULI': 'ALLSTIMULI.zip',
                          'ALLFIXATIONMAPS': 'ALLFIXATIONMAPS.zip'}
                   if archives else None)
  out = {'names': [], 'fixations': {}, 'maps': {}, 'sizes': {}}
  for i in range(num_images):
    h, w = sizes[i % len(sizes)]
    name = f'i{1000 + 37 * i}_scene'
    writer.write(f'ALLSTIMULI/{name}.jpeg', _jpeg(synthetic_photo(rng, h, w)))
    # Fixated pixels at least 3 px apart so that JPEG ringing of one does
    # not merge with another.
    pts = random_points(rng, 40, h // 3, w // 3)[:int(rng.integers(3, 9))]
    pts = pts * 3 + 1
    pts_img = np.zeros((h, w), np.uint8)
    pts_img[pts[:, 0], pts[:, 1]] = 255
    writer.write(f'ALLFIXATIONMAPS/{name}_fixPts.jpg',
                 _jpeg(pts_img, fixpts_quality))
    fix_map = smooth_map(rng, h, w, pts)
    map_jpeg = _jpeg(fix_map)
    writer.write(f'ALLFIXATIONMAPS/{name}_fixMap.jpg', map_jpeg)
    out['names'].append(name)
    out['fixations'][name] = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    out['maps'][name] = np.asarray(Image.open(io.BytesIO(map_jpeg)))
    out['sizes'][name] = (h, w)
  writer.close()
  return out


def write_mit300(manual_dir: os.PathLike, *, num_images: int = 3,
                 size: tuple[int, int] = (48, 64), archives: bool = False,
                 seed: int = 0) -> dict[str, Any]:
  """Writes ``<manual_dir>/mit300/BenchmarkIMAGES/i<k>.jpg`` (or its zip)."""
  rng = np.random.default_rng(seed)
  root = Path(manual_dir) / 'mit300'
  writer = _Writer(root, {'BenchmarkIMAGES': 'BenchmarkIMAGES.zip'}
                   if archives else None)
  names = []
  for k in range(1, num_images + 1):
    writer.write(f'BenchmarkIMAGES/i{k}.jpg',
                 _jpeg(synthetic_photo(rng, *size)))
    names.append(f'i{k}')
  # Example maps in a sub-folder must be ignored.
  writer.write('BenchmarkIMAGES/SM/i1_SM.jpg',
               _jpeg(np.zeros(size, np.uint8)))
  writer.close()
  return {'names': names}


def write_cat2000(manual_dir: os.PathLike, *,
                  categories: tuple[str, ...] = ('Action', 'BlackWhite'),
                  per_category: int = 2, size: tuple[int, int] = (27, 48),
                  archives: bool = False, seed: int = 0) -> dict[str, Any]:
  """Writes CAT2000 training files under ``<manual_dir>/cat2000/trainSet``.

  ``Stimuli/<Category>/NNN.jpg``, ``FIXATIONMAPS/<Category>/NNN.jpg`` and
  ``FIXATIONLOCS/<Category>/NNN.mat`` (variable ``fixLocs``, a binary map of
  the image's size); `BlackWhite` images are grayscale JPEGs. With
  `archives`, a single ``trainSet.zip``.
  """
  rng = np.random.default_rng(seed)
  root = Path(manual_dir) / 'cat2000'
  writer = _Writer(root, {'trainSet': 'trainSet.zip'} if archives else None)
  h, w = size
  out = {'ids': [], 'fixations': {}, 'categories': {}}
  for category in categories:
    for k in range(1, per_category + 1):
      key = f'{category}/{k:03d}'
      image = synthetic_photo(rng, h, w, grayscale=category == 'BlackWhite')
      writer.write(f'trainSet/Stimuli/{key}.jpg', _jpeg(image))
      pts = random_points(rng, int(rng.integers(2, 7)), h, w)
      locs = np.zeros((h, w), np.float64)
      locs[pts[:, 0], pts[:, 1]] = 1
      writer.write(f'trainSet/FIXATIONLOCS/{key}.mat', _mat({'fixLocs': locs}))
      writer.write(f'trainSet/FIXATIONMAPS/{key}.jpg',
                   _jpeg(smooth_map(rng, h, w, pts)))
      out['ids'].append(key)
      out['fixations'][key] = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
      out['categories'][key] = category
  # A stray sub-folder below a category must be ignored.
  writer.write('trainSet/Stimuli/Action/Output/001_out.jpg',
               _jpeg(np.zeros((h, w), np.uint8)))
  writer.close()
  return out


def remove(path: os.PathLike) -> None:
  shutil.rmtree(path, ignore_errors=True)
