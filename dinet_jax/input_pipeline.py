"""Input pipeline: TFDS saliency datasets to numpy batches for JAX.

Geometry (the single source of truth, also for the evaluator and predictor):
an image of size (h, w) is resized with its aspect ratio kept to fit the
model's input size (H, W), and zero-padded, centred (`preprocess_geometry`);
the ground-truth map gets the identical resize and padding. As in the
authors' code, the resized size is computed with integer floor division
(SALICON 480x640 -> 320x426 inside 320x480) and the padding is black:
images are padded before normalisation, so the padding of a normalised
image is ``-mean / std``, while maps are 0 in the padding.
`undo_padding` crops a prediction back to the content and resizes it to the
original size. Resizing is bilinear with half-pixel centres and, like the
authors' ``cv2.resize``, without antialiasing (`RESIZE_ANTIALIAS`): on
480x640 -> 320x426 antialiasing halves the pipeline's throughput.

Normalisation (`normalize_image`): RGB in [0, 1], then torchvision's
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

Training batches (`create_train_iterator`) for one epoch:

* ``image`` float32 (B, H, W, 3), normalised;
* ``saliency`` float32 (B, H, W, 1) in [0, 1], zero in the padding;
* optionally ``fixation_map`` float32 (B, H, W, 1): the number of fixations
  that fall on each pixel of the resized, padded frame.

The order is a pure function of (seed, epoch): a permutation of the split
(and the flip decisions) drawn from ``numpy.random.default_rng([seed,
epoch])``; process p of P takes every P-th example of it, and the last
incomplete batch is dropped. A resumed run passes ``start_batch`` to continue
the exact same order.

Evaluation batches (`create_eval_iterator`) cover every example exactly once
in the split's order; the last batch is padded with copies of the first
example, marked by ``mask`` False. They also carry ``orig_size``,
``fixations`` in original coordinates (padded with -1 to ``max_fixations``)
and ``num_fixations``, to compare at the original resolution.

Data is read with random access from the ``array_record`` files that this
project's builders write (TFDS ``as_data_source``), then decoded, resized and
batched in parallel by ``tf.data``.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from dinet_jax import datasets as _datasets
from dinet_jax.datasets.build import ensure_prepared  # Re-exported.

# The pipeline runs on the host: keep TensorFlow off any GPU (a GPU build of
# TensorFlow would otherwise reserve its memory, which JAX needs).
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Devices already initialised.
  pass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_METHOD = 'bilinear'
RESIZE_ANTIALIAS = False
FIXATION_PAD_VALUE = -1

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'PadGeometry', 'create_eval_iterator',
    'create_train_iterator', 'decode_image', 'ensure_prepared', 'epoch_order',
    'fixation_map', 'normalize_image', 'num_eval_batches', 'num_examples',
    'num_train_batches', 'preprocess_geometry', 'preprocess_image',
    'preprocess_map', 'resize_bilinear', 'undo_padding',
]

# --------------------------------------------------------------------------
# Geometry: one integer formula, evaluated by numpy and by TensorFlow.
# --------------------------------------------------------------------------


class PadGeometry(NamedTuple):
  """Where an image of some size lands in the model's input frame.

  Attributes:
    resized_hw: (height, width) of the resized content.
    offset: (top, left) of the content inside the (H, W) frame.
  """

  resized_hw: tuple[int, int]
  offset: tuple[int, int]


def _fit(h, w, target_h, target_w, where, minimum, maximum):
  """Resized size and offset; works on Python ints, numpy and TF tensors.

  Same rule as the authors' ``padding`` function: the side that limits the
  scale gets the target size, the other one ``(side * target) // limiting``.
  """
  rows_limit = h * target_w > w * target_h  # h / H > w / W, in integers.
  nh = where(rows_limit, target_h, (h * target_w) // w)
  nw = where(rows_limit, (w * target_h) // h, target_w)
  nh = maximum(minimum(nh, target_h), 1)
  nw = maximum(minimum(nw, target_w), 1)
  return nh, nw, (target_h - nh) // 2, (target_w - nw) // 2


def preprocess_geometry(orig_hw: tuple[int, int],
                        target_hw: tuple[int, int]) -> PadGeometry:
  """Resize size and (top, left) offset of an (h, w) image in an (H, W) frame.

  >>> preprocess_geometry((480, 640), (320, 480))
  PadGeometry(resized_hw=(320, 426), offset=(0, 27))
  """
  h, w = (int(v) for v in orig_hw)
  th, tw = (int(v) for v in target_hw)
  if min(h, w, th, tw) <= 0:
    raise ValueError(f'Bad sizes {orig_hw} -> {target_hw}.')
  nh, nw, top, left = _fit(h, w, th, tw, lambda c, a, b: a if c else b,
                           min, max)
  return PadGeometry((int(nh), int(nw)), (int(top), int(left)))


def _fit_tf(h, w, target_h, target_w):
  h, w = tf.cast(h, tf.int64), tf.cast(w, tf.int64)
  th, tw = tf.constant(target_h, tf.int64), tf.constant(target_w, tf.int64)
  return _fit(h, w, th, tw, tf.where, tf.minimum, tf.maximum)


def resize_bilinear(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of an (h, w) or (h, w, c) array, half-pixel centres.

  Matches ``tf.image.resize(..., 'bilinear', antialias=False)`` and, for
  upsampling, ``jax.image.resize(..., 'bilinear')``; edges are clamped.
  Returns float32.
  """
  a = np.asarray(array, dtype=np.float32)
  out_h, out_w = (int(v) for v in out_hw)

  def axis_weights(n_in, n_out):
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float32)

  lo, hi, f = axis_weights(a.shape[0], out_h)
  f = f.reshape((-1,) + (1,) * (a.ndim - 1))
  a = a[lo] * (1 - f) + a[hi] * f
  lo, hi, f = axis_weights(a.shape[1], out_w)
  f = f.reshape((1, -1) + (1,) * (a.ndim - 2))
  return (a[:, lo] * (1 - f) + a[:, hi] * f).astype(np.float32)


def undo_padding(pred_map: np.ndarray, orig_hw: tuple[int, int],
                 target_hw: tuple[int, int] | None = None) -> np.ndarray:
  """Crops the padding from a model-frame map and resizes it back.

  Args:
    pred_map: (H, W) or (H, W, 1) map in the model's input frame.
    orig_hw: the original image's (height, width).
    target_hw: the frame size (H, W); defaults to pred_map's size.

  Returns:
    float32 (orig_h, orig_w) map: the content region of `pred_map`, exactly
    as `preprocess_geometry` placed it, resized bilinearly.
  """
  pred = np.asarray(pred_map)
  if pred.ndim == 3:
    if pred.shape[-1] != 1:
      raise ValueError(f'Expected a (H, W) or (H, W, 1) map, got {pred.shape}.')
    pred = pred[..., 0]
  target_hw = tuple(target_hw or pred.shape)
  if tuple(pred.shape) != tuple(target_hw):
    raise ValueError(f'Map of shape {pred.shape} is not {target_hw}.')
  (nh, nw), (top, left) = preprocess_geometry(orig_hw, target_hw)
  content = pred[top:top + nh, left:left + nw]
  return resize_bilinear(content, orig_hw)


# --------------------------------------------------------------------------
# Per-image transforms (TF; numpy entry points run the same TF code).
# --------------------------------------------------------------------------


def normalize_image(images: Any) -> Any:
  """uint8 RGB (..., 3) -> float32 ``(x / 255 - mean) / std`` (ImageNet).

  Accepts numpy arrays (returns numpy) and TF tensors (returns a tensor); also
  accepts float values already in [0, 255]. Computed as one multiply-add,
  ``x * (1 / (255 std)) - mean / std``, identically for both.
  """
  scale = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)
  offset = (-np.asarray(IMAGENET_MEAN) /
            np.asarray(IMAGENET_STD)).astype(np.float32)
  if isinstance(images, tf.Tensor):
    return tf.cast(images, tf.float32) * scale + offset
  return np.asarray(images, dtype=np.float32) * scale + offset


def _resize_pad(x, geometry, target_hw, flip):
  """Resizes (h, w, c) to the content size, flips, pads: float32 0..255."""
  nh, nw, top, left = geometry
  th, tw = target_hw
  x = tf.image.resize(tf.cast(x, tf.float32),
                      tf.cast(tf.stack([nh, nw]), tf.int32),
                      method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS)
  x = tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)
  paddings = tf.stack([tf.stack([top, th - nh - top]),
                       tf.stack([left, tw - nw - left]),
                       tf.zeros([2], tf.int64)])
  x = tf.pad(x, paddings)
  return tf.ensure_shape(x, (th, tw, None))


def _fixation_map_tf(fixations, hw, geometry, target_hw, flip):
  """Counts of fixations at their resized-and-padded pixels, (H, W, 1)."""
  nh, nw, top, left = geometry
  h, w = tf.cast(hw[0], tf.int64), tf.cast(hw[1], tf.int64)
  fix = tf.cast(tf.reshape(fixations, [-1, 2]), tf.int64)
  # Pixel centre (r + 0.5) maps to (r + 0.5) * nh / h; take the pixel under
  # it, in exact integer arithmetic.
  rows = tf.clip_by_value(((2 * fix[:, 0] + 1) * nh) // (2 * h), 0, nh - 1)
  cols = tf.clip_by_value(((2 * fix[:, 1] + 1) * nw) // (2 * w), 0, nw - 1)
  cols = tf.where(flip, nw - 1 - cols, cols)
  idx = tf.stack([rows + top, cols + left], axis=1)
  counts = tf.scatter_nd(idx, tf.ones([tf.shape(idx)[0]], tf.float32),
                         tf.constant(target_hw, tf.int64))
  return counts[..., None]


def decode_image(data: bytes | str | os.PathLike) -> np.ndarray:
  """Encoded bytes or a file path -> uint8 (H, W, 3) RGB, decoded as in training.

  JPEG decoders differ by a few grey levels (TF's and PIL's do), so the
  predictor should decode with this function to see the pixels the model was
  trained on.
  """
  if not isinstance(data, bytes):
    data = tf.io.read_file(os.fspath(data))
  return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def preprocess_image(image: np.ndarray, target_hw: tuple[int, int],
                     flip: bool = False) -> np.ndarray:
  """One uint8 (h, w, 3) image -> normalised float32 (H, W, 3), as in training.

  For the predictor: the same resize, padding and normalisation as the
  input pipeline (the same TF code, run eagerly).
  """
  image = tf.convert_to_tensor(np.asarray(image))
  geometry = _fit_tf(tf.shape(image)[0], tf.shape(image)[1], *target_hw)
  x = _resize_pad(image, geometry, tuple(target_hw), tf.constant(flip))
  return normalize_image(x).numpy()


def preprocess_map(saliency: np.ndarray, target_hw: tuple[int, int],
                   flip: bool = False) -> np.ndarray:
  """One uint8 (h, w[, 1]) map -> float32 (H, W, 1) in [0, 1], as in training."""
  s = np.asarray(saliency)
  s = tf.convert_to_tensor(s if s.ndim == 3 else s[..., None])
  geometry = _fit_tf(tf.shape(s)[0], tf.shape(s)[1], *target_hw)
  x = _resize_pad(s, geometry, tuple(target_hw), tf.constant(flip))
  return tf.clip_by_value(x / 255.0, 0.0, 1.0).numpy()


def fixation_map(fixations: np.ndarray, orig_hw: tuple[int, int],
                 target_hw: tuple[int, int], flip: bool = False) -> np.ndarray:
  """Fixations (N, 2) (row, col) -> counts float32 (H, W, 1), as in training."""
  geometry = _fit_tf(orig_hw[0], orig_hw[1], *target_hw)
  return _fixation_map_tf(
      tf.constant(np.asarray(fixations, np.int64).reshape(-1, 2)),
      tf.constant(orig_hw, tf.int64), geometry, tuple(target_hw),
      tf.constant(flip)).numpy()


# --------------------------------------------------------------------------
# Sources, sizes and orders.
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _builder(dataset_name: str, data_dir: str):
  return ensure_prepared(dataset_name, data_dir)


def _open(dataset_name: str, split: str, data_dir):
  data_dir = os.path.abspath(os.fspath(data_dir or _datasets.DEFAULT_DATA_DIR))
  builder = _builder(dataset_name, data_dir)
  try:
    source = builder.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except NotImplementedError as e:
    raise ValueError(
        f'{dataset_name} in {builder.data_path} is stored as '
        f'{builder.info.file_format}; the input pipeline needs random access '
        '(array_record, the default of this project\'s builders). Rebuild it '
        'with --file_format array_record.') from e
  return builder, source


def num_examples(dataset_name: str, split: str, *, data_dir=None) -> int:
  """Examples in a split (TFDS split syntax such as 'train[:10%]' works)."""
  data_dir = os.path.abspath(os.fspath(data_dir or _datasets.DEFAULT_DATA_DIR))
  return int(_builder(dataset_name, data_dir).info.splits[split].num_examples)


def num_train_batches(dataset_name: str, split: str, *, data_dir=None,
                      batch_size: int, process_count: int = 1) -> int:
  """Batches per epoch of `create_train_iterator` (same for every process)."""
  n = num_examples(dataset_name, split, data_dir=data_dir)
  return (n // process_count) // batch_size


def num_eval_batches(dataset_name: str, split: str, *, data_dir=None,
                     batch_size: int, process_count: int = 1) -> int:
  """Batches of `create_eval_iterator` (same for every process)."""
  n = num_examples(dataset_name, split, data_dir=data_dir)
  return math.ceil(math.ceil(n / process_count) / batch_size)


def epoch_order(num: int, seed: int, epoch: int,
                flip: bool) -> tuple[np.ndarray, np.ndarray]:
  """The epoch's permutation of example indices and flip flags.

  A pure function of (num, seed, epoch, flip): numpy's PCG64 seeded with the
  sequence [seed, epoch].
  """
  rng = np.random.default_rng([int(seed), int(epoch)])
  order = rng.permutation(num)
  flips = rng.random(num) < 0.5
  return order, (flips[order] if flip else np.zeros(num, bool))


def _check_batch(batch_size: int, num_devices: int | None) -> None:
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = jax.local_device_count()
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(f'batch_size {batch_size} must be a positive multiple of '
                     f'the number of local devices ({num_devices}).')


# --------------------------------------------------------------------------
# tf.data pipelines.
# --------------------------------------------------------------------------

_FETCH_CHUNK = 32
_SKIP_IMAGES = {'image': tfds.decode.SkipDecoding(),
                'saliency': tfds.decode.SkipDecoding()}


def _records(source, indices: np.ndarray, extra: dict[str, np.ndarray]):
  """tf.data of {'record': serialized example, **extra} in `indices` order."""

  def fetch(idx):
    return np.array(source.__getitems__([int(i) for i in idx]), dtype=object)

  @tf.autograph.experimental.do_not_convert
  def add_records(d):
    records = tf.numpy_function(fetch, [d['index']], tf.string, stateful=False)
    records.set_shape([None])
    return {**d, 'record': records}

  ds = tf.data.Dataset.from_tensor_slices(
      {'index': indices.astype(np.int64), **extra})
  return ds.batch(_FETCH_CHUNK).map(add_records).unbatch()


def _options(ds: tf.data.Dataset, threads: int | None) -> tf.data.Dataset:
  opts = tf.data.Options()
  opts.deterministic = True
  if threads:
    opts.threading.private_threadpool_size = threads
  opts.threading.max_intra_op_parallelism = 1
  return ds.with_options(opts)


def _decode(features, record):
  ex = features.deserialize_example(record, decoders=_SKIP_IMAGES)
  image = tf.io.decode_image(ex['image'], channels=3, expand_animations=False)
  saliency = tf.io.decode_image(ex['saliency'], channels=1,
                                expand_animations=False)
  return ex, image, saliency


def create_train_iterator(
    dataset_name: str,
    split: str,
    *,
    data_dir=None,
    image_size: tuple[int, int],
    batch_size: int,
    seed: int,
    epoch: int,
    flip: bool = False,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    with_fixation_maps: bool = False,
    num_devices: int | None = None,
    threads: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over the training batches of one epoch, as numpy dicts.

  Args:
    dataset_name: 'name' or 'name/config' of a builder of this project
      (`saliency_popout` is generated on first use).
    split: a TFDS split, e.g. 'train', 'train[:90%]', 'fold1+fold2'.
    data_dir: prepared data (default `dinet_jax.datasets.DEFAULT_DATA_DIR`).
    image_size: the model's input (H, W).
    batch_size: examples per batch of this process (the global batch divided
      by `process_count`); a multiple of `num_devices`.
    seed, epoch: the order is a pure function of both (`epoch_order`).
    flip: random horizontal flips (image, map and fixations together).
    start_batch: skip this many batches (resuming within an epoch).
    process_index, process_count: this process reads every
      `process_count`-th example of the epoch's permutation.
    with_fixation_maps: also yield ``fixation_map`` (B, H, W, 1) counts.
    num_devices: local devices (default `jax.local_device_count()`).
    threads: size of tf.data's thread pool (default: all cores).
    prefetch: batches prepared ahead.

  Returns:
    An iterator over {'image': float32 (B, H, W, 3), 'saliency': float32
    (B, H, W, 1)[, 'fixation_map': float32 (B, H, W, 1)]}: `num_train_batches
    (...) - start_batch` batches (the incomplete last batch is dropped).
    Arguments are checked and the dataset opened when this is called.
  """
  _check_batch(batch_size, num_devices)
  builder, source = _open(dataset_name, split, data_dir)
  features = builder.info.features
  order, flips = epoch_order(len(source), seed, epoch, flip)
  per_process = len(source) // process_count
  usable = (per_process // batch_size) * batch_size
  order = order[process_index::process_count][:usable]
  flips = flips[process_index::process_count][:usable]
  order = order[start_batch * batch_size:]
  flips = flips[start_batch * batch_size:]
  target_hw = (int(image_size[0]), int(image_size[1]))

  @tf.autograph.experimental.do_not_convert  # Plain TF ops only.
  def process(d):
    ex, image, saliency = _decode(features, d['record'])
    shape = tf.shape(image, out_type=tf.int64)
    geometry = _fit_tf(shape[0], shape[1], *target_hw)
    out = {
        'image': normalize_image(
            _resize_pad(image, geometry, target_hw, d['flip'])),
        'saliency': tf.clip_by_value(
            _resize_pad(saliency, geometry, target_hw, d['flip']) / 255.0,
            0.0, 1.0),
    }
    if with_fixation_maps:
      out['fixation_map'] = _fixation_map_tf(
          ex['fixations'], shape[:2], geometry, target_hw, d['flip'])
    return out

  ds = _records(source, order, {'flip': flips})
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)
  ds = _options(ds, threads)
  return ds.as_numpy_iterator()


@functools.lru_cache(maxsize=32)
def _max_fixations(dataset_name: str, data_dir: str, split: str) -> int:
  _, source = _open(dataset_name, split, data_dir)
  best = 0
  for start in range(0, len(source), 256):
    for record in source.__getitems__(
        list(range(start, min(start + 256, len(source))))):
      feature = tf.train.Example.FromString(record).features.feature
      best = max(best, len(feature['fixations'].int64_list.value) // 2)
  return best


def create_eval_iterator(
    dataset_name: str,
    split: str,
    *,
    data_dir=None,
    image_size: tuple[int, int],
    batch_size: int,
    max_fixations: int | None = None,
    with_originals: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    num_devices: int | None = None,
    threads: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, Any]]:
  """An iterator over evaluation batches covering every example once.

  Process p of P takes examples p, p + P, ... in the split's order; every
  process yields `num_eval_batches(...)` batches, the last ones padded with
  copies of an example, marked by ``mask`` False.

  Args:
    dataset_name, split, data_dir, image_size, batch_size, process_index,
      process_count, num_devices, threads, prefetch: as for
      `create_train_iterator`.
    max_fixations: length of the padded ``fixations``; None = the largest
      count in the split (computed once per process and cached). An example
      with more fixations is an error.
    with_originals: also yield ``saliency_orig``, a list of the original
      uint8 (h, w) maps (sizes differ, so not stacked).

  Returns:
    An iterator over dicts with ``image`` float32 (B, H, W, 3) normalised; ``saliency``
    float32 (B, H, W, 1) in [0, 1]; ``fixation_map`` float32 (B, H, W, 1)
    (counts, as in training); ``mask`` bool (B,); ``has_saliency`` bool
    (B,); ``orig_size`` int32 (B, 2) (h, w); ``fixations`` int32
    (B, max_fixations, 2) 0-based (row, col) in the original image, padded
    with -1; ``num_fixations`` int32 (B,); ``image_id`` and ``file_name``
    (B,) str object arrays; ``category`` int64 (B,) for CAT2000; and with
    `with_originals` ``saliency_orig``, a list of B uint8 arrays.
  """
  _check_batch(batch_size, num_devices)
  data_dir = os.path.abspath(os.fspath(data_dir or _datasets.DEFAULT_DATA_DIR))
  builder, source = _open(dataset_name, split, data_dir)
  features = builder.info.features
  if max_fixations is None:
    max_fixations = max(1, _max_fixations(dataset_name, data_dir, split))
  n = len(source)
  mine = np.arange(n)[process_index::process_count]
  total = math.ceil(math.ceil(n / process_count) / batch_size) * batch_size
  mask = np.arange(total) < len(mine)
  indices = np.concatenate(
      [mine, np.full(total - len(mine), mine[0] if len(mine) else 0)])
  target_hw = (int(image_size[0]), int(image_size[1]))
  has_category = 'category' in features
  no_flip = tf.constant(False)

  @tf.autograph.experimental.do_not_convert  # Plain TF ops only.
  def process(d):
    ex, image, saliency = _decode(features, d['record'])
    shape = tf.shape(image, out_type=tf.int64)
    geometry = _fit_tf(shape[0], shape[1], *target_hw)
    fix = tf.cast(tf.reshape(ex['fixations'], [-1, 2]), tf.int32)
    count = tf.shape(fix)[0]
    check = tf.debugging.assert_less_equal(
        count, max_fixations,
        message=f'An example has more fixations than max_fixations='
        f'{max_fixations}; pass a larger max_fixations (or None).')
    with tf.control_dependencies([check]):
      padded = tf.pad(fix, [[0, max_fixations - count], [0, 0]],
                      constant_values=FIXATION_PAD_VALUE)
    out = {
        'image': normalize_image(
            _resize_pad(image, geometry, target_hw, no_flip)),
        'saliency': tf.clip_by_value(
            _resize_pad(saliency, geometry, target_hw, no_flip) / 255.0,
            0.0, 1.0),
        'fixation_map': _fixation_map_tf(fix, shape[:2], geometry, target_hw,
                                         no_flip),
        'mask': d['mask'],
        'has_saliency': ex['has_saliency'],
        'orig_size': tf.cast(shape[:2], tf.int32),
        'fixations': tf.ensure_shape(padded, (max_fixations, 2)),
        'num_fixations': count,
        'image_id': ex['image_id'],
        'file_name': ex['file_name'],
    }
    if has_category:
      out['category'] = ex['category']
    if with_originals:
      out['saliency_png'] = ex['saliency']
    return out

  ds = _records(source, indices, {'mask': mask})
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size).prefetch(prefetch)
  ds = _options(ds, threads)
  return _finish_eval_batches(ds.as_numpy_iterator(), with_originals)


def _finish_eval_batches(batches, with_originals: bool):
  for batch in batches:
    for key in ('image_id', 'file_name'):
      batch[key] = np.array([v.decode('utf-8') for v in batch[key]],
                            dtype=object)
    if with_originals:
      batch['saliency_orig'] = [_decode_gray(v)
                                for v in batch.pop('saliency_png')]
    yield batch


def _decode_gray(png: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(png)) as im:
    return np.asarray(im.convert('L'), dtype=np.uint8)
