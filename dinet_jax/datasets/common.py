"""Shared pieces of the saliency dataset builders.

Every builder in this package produces examples with the same features (see
`saliency_features`):

* ``image``: ``(H, W, 3) uint8`` RGB image at its original resolution. The
  original JPEG/PNG bytes are stored unchanged when the file is already RGB;
  grayscale, palette or CMYK images are converted to RGB and stored as PNG.
* ``saliency``: ``(H, W, 1) uint8`` continuous ground-truth saliency map at
  the image's resolution (0 = not salient, 255 = the map's maximum as
  distributed). Splits without public ground truth (SALICON test, MIT300)
  store an all-zero map and ``has_saliency = False``: the feature set is the
  same for every split, and consumers must check ``has_saliency``.
* ``has_saliency``: ``bool``, whether ``saliency`` is real ground truth.
* ``fixations``: ``(N, 2) int32`` fixated pixels as 0-based ``(row, col)`` in
  the original image, i.e. ``0 <= row < H`` and ``0 <= col < W``. All
  observers' fixations are concatenated; duplicates are kept (metrics that
  count each fixated pixel once must de-duplicate). ``N`` may be 0 (test
  splits). Fixations that fall outside the image are dropped at build time.
* ``image_id``: ``str``, the image's name without extension and without
  directories except where needed to be unique (CAT2000: ``Action/001``).
* ``file_name``: ``str``, the source image file's path relative to the
  dataset's folder of images (e.g. ``COCO_val2014_000000000192.jpg``,
  ``Action/001.jpg``); write predictions under this name.

CAT2000 adds ``category`` (a `tfds.features.ClassLabel`).

The public datasets cannot be downloaded by a script. Their builders read the
files a user placed in a *manual dir* (``data/`` by default), either as
extracted folders or as the zip archives as distributed; see
``data/README.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

log = logging.getLogger(__name__)

# Default locations, relative to the current working directory (the repo root
# in the README's commands). `data/` is git-ignored except for its README.
DEFAULT_MANUAL_DIR = 'data'
DEFAULT_DATA_DIR = os.path.join('data', 'tfds')

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')

_FEATURE_DOCS = {
    'image': '(H, W, 3) uint8 RGB image at its original resolution.',
    'saliency': ('(H, W, 1) uint8 ground-truth saliency map, same size as the '
                 'image; all zeros where has_saliency is False.'),
    'has_saliency': 'Whether `saliency` holds real ground truth.',
    'fixations': ('(N, 2) int32 fixated pixels as 0-based (row, col) in the '
                  'original image; all observers concatenated, duplicates '
                  'kept; N may be 0.'),
    'image_id': 'Image name without extension (unique within the dataset).',
    'file_name': 'Source image file name, relative to the images folder.',
}


class MissingFilesError(FileNotFoundError):
  """Files a builder needs are not in the manual dir (the message says which)."""


class CorruptFileError(ValueError):
  """A source file cannot be read or decoded (the message names the file)."""


def saliency_features(
    extra: dict[str, tfds.features.FeatureConnector] | None = None,
    *,
    image_encoding: str | None = None,
) -> tfds.features.FeaturesDict:
  """The features every saliency builder in this package produces."""
  features = {
      'image': tfds.features.Image(
          shape=(None, None, 3), encoding_format=image_encoding,
          doc=_FEATURE_DOCS['image']),
      'saliency': tfds.features.Image(
          shape=(None, None, 1), encoding_format='png',
          doc=_FEATURE_DOCS['saliency']),
      'has_saliency': tfds.features.Scalar(
          dtype=np.bool_, doc=_FEATURE_DOCS['has_saliency']),
      'fixations': tfds.features.Tensor(
          shape=(None, 2), dtype=np.int32, doc=_FEATURE_DOCS['fixations']),
      'image_id': tfds.features.Text(doc=_FEATURE_DOCS['image_id']),
      'file_name': tfds.features.Text(doc=_FEATURE_DOCS['file_name']),
  }
  features.update(extra or {})
  return tfds.features.FeaturesDict(features)


# --------------------------------------------------------------------------
# Files in the manual dir: extracted folders and zip archives alike.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One file found in the manual dir, on disk or inside a zip archive.

  Attributes:
    path: '/'-separated path relative to the dataset's manual folder. For a
      member of an archive this is the archive's folder joined with the
      member's path inside the archive (the archive's own name is dropped,
      so ``images.zip`` holding ``images/train/a.jpg`` and an extracted
      ``images/train/a.jpg`` have the same path).
    disk_path: the file on disk, or the archive holding it.
    member: the member's name inside the archive, or None for a plain file.
  """

  path: str
  disk_path: Path
  member: str | None = None

  @property
  def name(self) -> str:
    return PurePosixPath(self.path).name

  @property
  def parts(self) -> tuple[str, ...]:
    return PurePosixPath(self.path).parts

  def describe(self) -> str:
    """Where the file is, for error messages."""
    if self.member is None:
      return os.fspath(self.disk_path)
    return f'{os.fspath(self.disk_path)}:{self.member}'

  def read_bytes(self) -> bytes:
    try:
      if self.member is None:
        return self.disk_path.read_bytes()
      with zipfile.ZipFile(self.disk_path) as archive:
        return archive.read(self.member)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
      raise CorruptFileError(f'Cannot read {self.describe()}: {e}') from e


def _is_junk(parts: Sequence[str]) -> bool:
  return any(p.startswith('.') or p == '__MACOSX' or p == 'Thumbs.db'
             for p in parts)


def list_source_files(root: Path) -> list[SourceFile]:
  """All files below `root`, looking inside every ``.zip`` archive too.

  When a file exists both extracted and inside an archive, the extracted
  copy wins (it is what a user who unzipped next to the archive expects).
  """
  root = Path(root)
  plain: dict[str, SourceFile] = {}
  zipped: dict[str, SourceFile] = {}
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not _is_junk([d]))
    rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
    for filename in sorted(filenames):
      if _is_junk([filename]):
        continue
      disk_path = Path(dirpath) / filename
      if filename.lower().endswith('.zip'):
        try:
          with zipfile.ZipFile(disk_path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
        except (OSError, zipfile.BadZipFile) as e:
          raise CorruptFileError(
              f'Cannot read the zip archive {disk_path}: {e}') from e
        for m in members:
          member_parts = PurePosixPath(m.filename).parts
          if _is_junk(member_parts):
            continue
          path = (rel_dir / m.filename).as_posix()
          zipped.setdefault(path, SourceFile(path, disk_path, m.filename))
      else:
        path = (rel_dir / filename).as_posix()
        plain[path] = SourceFile(path, disk_path)
  merged = dict(zipped)
  merged.update(plain)
  return [merged[k] for k in sorted(merged)]


def dataset_manual_folder(manual_dir: Path, name: str) -> Path:
  """`<manual_dir>/<name>` if it exists, else `manual_dir` if it is named so.

  The default layout puts each dataset in its own folder of the manual dir
  (``data/salicon``, ``data/mit1003``...); `tfds build
  --add_name_to_manual_dir` or a manual dir that already is that folder are
  accepted too.
  """
  manual_dir = Path(manual_dir)
  candidate = manual_dir / name
  if candidate.is_dir():
    return candidate
  if manual_dir.name == name and manual_dir.is_dir():
    return manual_dir
  return candidate


def manual_folder_from(dl_manager: Any, name: str,
                       expected: Callable[[str], str]) -> Path:
  """The dataset's manual folder, with a useful error when it is missing.

  Args:
    dl_manager: the TFDS download manager of the build.
    name: the dataset's folder name in the manual dir.
    expected: folder -> the list of expected files, for the message.
  """
  # `dl_manager.manual_dir` raises a generic error when the dir is empty or
  # missing; read the configured path instead to name the exact files.
  manual_dir = getattr(dl_manager, '_manual_dir', None)
  if manual_dir is None:
    manual_dir = Path(DEFAULT_MANUAL_DIR)
  folder = dataset_manual_folder(Path(manual_dir), name)
  if not folder.is_dir():
    raise MissingFilesError(
        f'{name}: the folder {folder} does not exist. It must hold the '
        f'dataset as distributed (extracted folders or the zip archives):\n'
        f'{expected(str(folder))}')
  return folder


def check_count(dataset: str, split: str, found: int, official: int) -> None:
  if found != official:
    log.warning('%s %s: found %d examples, the official release has %d.',
                dataset, split, found, official)


# --------------------------------------------------------------------------
# Decoding and validating source files.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedImage:
  """A validated RGB image: the bytes to store and its size."""

  data: bytes  # the file's bytes kept as is, or the RGB image as PNG
  height: int
  width: int


def load_image(source: SourceFile) -> LoadedImage:
  """Reads and fully decodes an image; keeps its bytes if already RGB."""
  raw = source.read_bytes()
  try:
    with Image.open(io.BytesIO(raw)) as im:
      im.load()  # Decodes everything: raises on truncated data.
      fmt, mode = im.format, im.mode
      if mode == 'RGB' and fmt in ('JPEG', 'PNG'):
        return LoadedImage(raw, im.height, im.width)
      rgb = np.asarray(im.convert('RGB'), dtype=np.uint8)
  except Exception as e:  # PIL raises many types: OSError, SyntaxError...
    raise CorruptFileError(
        f'Cannot decode the image {source.describe()}: {e}') from e
  return LoadedImage(encode_png(rgb), rgb.shape[0], rgb.shape[1])


def load_gray(source: SourceFile) -> np.ndarray:
  """Reads a map (saliency map, fixation-points image) as (H, W) uint8."""
  raw = source.read_bytes()
  try:
    with Image.open(io.BytesIO(raw)) as im:
      im.load()
      if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        arr = np.asarray(im, dtype=np.float64)
        peak = arr.max()
        arr = arr * (255.0 / peak) if peak > 0 else arr
        return np.round(arr).astype(np.uint8)
      if im.mode == 'F':
        arr = np.asarray(im, dtype=np.float64)
        peak = arr.max()
        arr = arr * (255.0 / peak) if peak > 0 else arr
        return np.round(np.clip(arr, 0, 255)).astype(np.uint8)
      return np.asarray(im.convert('L'), dtype=np.uint8)
  except Exception as e:
    raise CorruptFileError(
        f'Cannot decode the map {source.describe()}: {e}') from e


def check_same_size(image: SourceFile, image_hw: tuple[int, int],
                    other: SourceFile, other_hw: tuple[int, int]) -> None:
  if tuple(image_hw) != tuple(other_hw):
    raise CorruptFileError(
        f'{other.describe()} is {other_hw[0]}x{other_hw[1]} but its image '
        f'{image.describe()} is {image_hw[0]}x{image_hw[1]} (HxW).')


def clean_fixations(rows_cols: np.ndarray, height: int, width: int,
                    what: str) -> np.ndarray:
  """Rounds to int32 (N, 2) (row, col) and drops points outside the image."""
  rc = np.asarray(rows_cols, dtype=np.float64).reshape(-1, 2)
  rc = rc[np.all(np.isfinite(rc), axis=1)]
  rc = np.floor(rc + 0.5).astype(np.int64)
  inside = ((rc[:, 0] >= 0) & (rc[:, 0] < height) &
            (rc[:, 1] >= 0) & (rc[:, 1] < width))
  dropped = int((~inside).sum())
  if dropped:
    log.info('%s: dropped %d of %d fixations outside the %dx%d image.',
             what, dropped, len(rc), height, width)
  return rc[inside].astype(np.int32)


def xy1_to_rowcol0(xy: np.ndarray) -> np.ndarray:
  """Matlab-style 1-based ``[x y]`` points to 0-based ``(row, col)``."""
  xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
  return np.stack([xy[:, 1] - 1.0, xy[:, 0] - 1.0], axis=1)


def points_from_map(fix_map: np.ndarray, threshold: int = 128) -> np.ndarray:
  """Fixated pixels (row, col) of a binary/JPEG fixation map (> threshold)."""
  return np.argwhere(np.asarray(fix_map) >= threshold).astype(np.int32)


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of an (H, W, 1) or (H, W, 3) uint8 array (lossless)."""
  array = np.asarray(array, dtype=np.uint8)
  if array.ndim == 3 and array.shape[2] == 1:
    array = array[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG', compress_level=1)
  return buffer.getvalue()


def zero_map(height: int, width: int) -> bytes:
  """An all-zero (H, W, 1) map as PNG bytes (for splits without maps)."""
  return encode_png(np.zeros((height, width), dtype=np.uint8))


def no_fixations() -> np.ndarray:
  return np.zeros((0, 2), dtype=np.int32)


def load_mat(source: SourceFile) -> dict[str, Any]:
  """Loads a MATLAB v5 .mat file (scipy) and names the file on failure."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  raw = source.read_bytes()
  try:
    return scipy.io.loadmat(io.BytesIO(raw), squeeze_me=False,
                            struct_as_record=True)
  except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
    raise CorruptFileError(
        f'{source.describe()} is a MATLAB v7.3 file, which is not '
        f'supported; save it with -v7: {e}') from e
  except Exception as e:
    raise CorruptFileError(
        f'Cannot read the .mat file {source.describe()}: {e}') from e


# --------------------------------------------------------------------------
# The base builder.
# --------------------------------------------------------------------------


class SaliencyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: array_record files by default, and a clean failed build.

  Datasets are written as ``array_record`` (random access, which the input
  pipeline uses for exact per-epoch permutations) unless another
  ``file_format`` is requested.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """The builder's source file.

    TFDS 4.9.10's own version needs the `importlib_resources` backport, which
    it only declares as a dependency for Python < 3.9, so it fails for
    packages installed in development mode on newer Pythons; this is its
    fallback branch, which is what it returns for a plain package anyway.
    """
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.data_path.exists():
      self.info.set_file_format('array_record', override=True)

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           **kwargs):
    """As TFDS's, with this project's defaults and a clean failed build.

    * The manual dir defaults to `DEFAULT_MANUAL_DIR` (``data/``) instead of
      TFDS's ``<data_dir>/downloads/manual``.
    * Nothing is looked up on Google Cloud Storage (``try_download_gcs``).
    * TFDS already writes into a temporary folder that it deletes when the
      build fails; this also removes the ``<data_dir>/<name>/.config``
      metadata and the empty folders created before the failure, and the
      empty ``downloads`` folders TFDS creates but these builders never use.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    changes = {'try_download_gcs': False}
    if download_config.manual_dir is None:
      changes['manual_dir'] = os.path.abspath(DEFAULT_MANUAL_DIR)
    download_config = dataclasses.replace(download_config, **changes)

    root = Path(self.data_dir_root)
    downloads = Path(download_dir) if download_dir else root / 'downloads'
    watched = list(_parents_up_to(Path(self.data_path), root))
    watched += [downloads / 'extracted', downloads, root]
    existed = {p for p in watched if p.exists()}
    config_dir = root / self.name / '.config'
    config_existed = config_dir.exists()
    try:
      return super().download_and_prepare(
          download_dir=download_dir, download_config=download_config,
          **kwargs)
    except BaseException:
      if not Path(self.data_path).exists():
        if not config_existed and config_dir.exists():
          shutil.rmtree(config_dir, ignore_errors=True)
      raise
    finally:
      for p in watched:  # Deepest first.
        if p not in existed and p.is_dir() and not any(p.iterdir()):
          p.rmdir()


def _parents_up_to(path: Path, root: Path) -> Iterator[Path]:
  """`path` and its parents strictly below `root`, deepest first."""
  path, root = Path(path), Path(root)
  while path != root and root in path.parents:
    yield path
    path = path.parent


_COCO_RE = re.compile(r'^COCO_(train|val|test)2014_(\d+)$')


def coco_split(stem: str) -> str | None:
  m = _COCO_RE.match(stem)
  return m.group(1) if m else None
