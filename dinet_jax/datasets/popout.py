"""`saliency_popout`: a procedurally generated pop-out saliency dataset.

Made locally, with no download, deterministically from a seed. Each scene is
a grid of bars on a noisy grey background. All bars but one (the distractors)
share a colour, an orientation and a size, each drawn at random per scene;
the *target* differs in exactly one of them (``odd_feature``): another hue,
a perpendicular orientation, or a bigger or smaller size. Because the
distractors' appearance changes from scene to scene, no colour or orientation
is salient by itself, and sizes overlap between scenes: a model must compare
an item with its neighbours, i.e. use spatial context, to find the target.

Simulated observers fixate mostly around the target, sometimes on a random
distractor, and otherwise on a centre-biased background component (a
Gaussian around the image centre). The ground-truth map is the fixation
counts blurred with a Gaussian whose sigma is relative to the image size,
scaled so that its maximum is 255. The target sits anywhere on the grid, so
the centre-bias baseline (`dinet_jax.baselines.centre_bias_map`) scores
clearly worse than a model that finds it.

Configs (`SaliencyPopoutConfig`; a custom one can be passed as
``tfds.builder('saliency_popout', config=SaliencyPopoutConfig(name=...))``,
give it a name of its own since prepared data is stored under it):

* ``default``: 96x128 images; train 2,000 / validation 200 / test 200. Small
  enough to train on 2 CPU cores in minutes; builds in seconds.
* ``tiny``: 48x64 images; 64 / 16 / 16 examples, for tests and smoke runs.
* ``large``: 240x320 images; 10,000 / 1,000 / 1,000.

Any other size is a config named by its spec, e.g.
``saliency_popout/64x96_500-100-100`` or ``..._seed3`` (`config_name`).

All splits, test included, have ground truth (``has_saliency`` is True).
Besides the common features (see `dinet_jax.datasets.common`) each example
has ``target`` (the target's centre, 0-based (row, col) int32) and
``odd_feature`` (colour, orientation or size).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import scipy.ndimage
import tensorflow_datasets as tfds

from dinet_jax.datasets import common

ODD_FEATURES = ('colour', 'orientation', 'size')
_SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}


@dataclasses.dataclass(eq=False)
class SaliencyPopoutConfig(tfds.core.BuilderConfig):
  """Size and generation parameters of `saliency_popout`.

  Attributes:
    image_size: (height, width) of every image.
    num_train, num_validation, num_test: examples per split (0 drops it).
    seed: the generation seed; example i of a split depends only on
      (seed, split, i) and the builder's version.
    num_observers: simulated observers per image.
    fixations_per_observer: (min, max) fixations of each observer.
    p_target: probability that a fixation is drawn around the target.
    p_distractor: probability that it is drawn around a random distractor;
      the rest (1 - p_target - p_distractor) comes from the centre bias.
    centre_sigma: std of the centre-bias component, as a fraction of
      (height, width).
    blur_sigma: std of the Gaussian that turns fixations into the map, as a
      fraction of max(height, width).
  """

  image_size: tuple[int, int] = (96, 128)
  num_train: int = 2000
  num_validation: int = 200
  num_test: int = 200
  seed: int = 0
  num_observers: int = 10
  fixations_per_observer: tuple[int, int] = (3, 6)
  p_target: float = 0.55
  p_distractor: float = 0.15
  centre_sigma: float = 0.2
  blur_sigma: float = 1 / 32


def make_example(config: SaliencyPopoutConfig, split: str,
                 index: int) -> dict[str, object]:
  """Generates example `index` of `split`: a pure function of its arguments.

  Returns the example as the builder stores it: ``image`` (H, W, 3) uint8,
  ``saliency`` (H, W, 1) uint8, ``fixations`` (N, 2) int32 0-based
  (row, col), ``target`` (2,) int32, ``odd_feature`` (a name), plus the
  common ``has_saliency``, ``image_id`` and ``file_name``.
  """
  h, w = (int(v) for v in config.image_size)
  if min(h, w) < 16:
    raise ValueError(f'image_size {config.image_size} is too small (>= 16).')
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])

  # Grid of item positions, centred, with jitter.
  cell = max(8.0, min(h, w) / 6.0)
  n_rows, n_cols = max(2, int(h // cell)), max(2, int(w // cell))
  cell_h, cell_w = h / n_rows, w / n_cols
  occupied = rng.random((n_rows, n_cols)) < 0.7
  if occupied.sum() < 4:
    occupied.flat[rng.choice(occupied.size, 4, replace=False)] = True
  rows, cols = np.nonzero(occupied)
  n = len(rows)
  jitter = rng.uniform(-0.12, 0.12, size=(n, 2))
  cy = (rows + 0.5 + jitter[:, 0]) * cell_h
  cx = (cols + 0.5 + jitter[:, 1]) * cell_w
  target = int(rng.integers(n))
  odd = int(rng.integers(len(ODD_FEATURES)))

  # Distractor appearance: random per scene; small per-item variation.
  base_hue = rng.random()
  base_angle = rng.uniform(0.0, np.pi)
  # The distractors' size varies between scenes too, so that a big or small
  # target is odd relative to its neighbours more than in absolute terms.
  base_len = rng.uniform(0.32, 0.62) * min(cell_h, cell_w)
  hues = (base_hue + rng.normal(0.0, 0.012, n)) % 1.0
  angles = base_angle + rng.normal(0.0, 0.08, n)
  lengths = base_len * (1.0 + rng.normal(0.0, 0.04, n))
  widths = 0.3 * lengths
  if ODD_FEATURES[odd] == 'colour':
    hues[target] = (base_hue + rng.uniform(0.3, 0.7)) % 1.0
  elif ODD_FEATURES[odd] == 'orientation':
    angles[target] = base_angle + np.pi / 2 + rng.normal(0.0, 0.08)
  else:
    scale = 1.5 if rng.random() < 0.5 else 0.6
    lengths[target] *= scale
    widths[target] *= scale
  colours = _hsv_to_rgb(hues, 0.85, 0.95)  # (n, 3) in [0, 1]

  # Render: background grey level and noise, then anti-aliased bars.
  grey = rng.uniform(0.3, 0.6)
  image = grey + rng.normal(0.0, 0.025, (h, w, 1))
  image = np.repeat(image, 3, axis=2)
  # Each bar is drawn on a small window around its centre (fast), then
  # accumulated on a canvas with a margin so that windows never clip.
  r = int(np.ceil(max(lengths.max(), widths.max()) / 2)) + 2
  size = 2 * r + 1
  oy = np.floor(cy).astype(int) - r
  ox = np.floor(cx).astype(int) - r
  yy = (oy[:, None] + np.arange(size)[None, :] + 0.5)[:, :, None]
  xx = (ox[:, None] + np.arange(size)[None, :] + 0.5)[:, None, :]
  dy = yy - cy[:, None, None]
  dx = xx - cx[:, None, None]
  ux = np.cos(angles)[:, None, None]
  uy = np.sin(angles)[:, None, None]
  along = np.abs(dx * ux + dy * uy) - lengths[:, None, None] / 2
  across = np.abs(-dx * uy + dy * ux) - widths[:, None, None] / 2
  dist = np.hypot(np.maximum(along, 0.0), np.maximum(across, 0.0))
  alpha = np.clip(1.0 - dist, 0.0, 1.0)  # (n, size, size)
  canvas = np.zeros((h + 2 * r, w + 2 * r, 4))  # RGB paint + coverage
  patches = np.concatenate(
      [alpha[..., None] * colours[:, None, None, :], alpha[..., None]], -1)
  for k in range(n):  # Items do not overlap.
    canvas[oy[k] + r:oy[k] + r + size, ox[k] + r:ox[k] + r + size] += (
        patches[k])
  canvas = canvas[r:r + h, r:r + w]
  cover = np.clip(canvas[..., 3:], 0.0, 1.0)
  image = image * (1.0 - cover) + canvas[..., :3]
  image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)

  # Fixations: a mixture of target, distractors and centre bias.
  lo, hi = config.fixations_per_observer
  counts = rng.integers(lo, hi + 1, size=config.num_observers)
  total = int(counts.sum())
  p_centre = 1.0 - config.p_target - config.p_distractor
  if p_centre < 0:
    raise ValueError('p_target + p_distractor must be <= 1.')
  component = rng.choice(3, size=total,
                         p=[config.p_target, config.p_distractor, p_centre])
  others = np.delete(np.arange(n), target)
  picked = rng.choice(others, size=total)
  spread = 0.3 * min(cell_h, cell_w)
  points = np.empty((total, 2))
  centres = np.stack([cy, cx], axis=1)
  points[:] = np.where((component == 0)[:, None], centres[target],
                       centres[picked])
  points += rng.normal(0.0, spread, (total, 2))
  centre_pts = (np.array([h / 2, w / 2]) +
                rng.normal(0.0, 1.0, (total, 2)) *
                np.array([config.centre_sigma * h, config.centre_sigma * w]))
  points = np.where((component == 2)[:, None], centre_pts, points)
  fixations = common.clean_fixations(points - 0.5, h, w,
                                     f'saliency_popout {split} {index}')

  saliency = fixation_density(fixations, h, w,
                              config.blur_sigma * max(h, w))
  image_id = f'{split}_{index:06d}'
  return {
      'image': image,
      'saliency': saliency[..., None],
      'has_saliency': True,
      'fixations': fixations,
      'image_id': image_id,
      'file_name': image_id + '.png',
      'target': np.array([int(cy[target]), int(cx[target])], np.int32),
      'odd_feature': ODD_FEATURES[odd],
  }


_SPEC = re.compile(r'^(\d+)x(\d+)_(\d+)-(\d+)-(\d+)(?:_seed(\d+))?$')


def config_name(image_size: tuple[int, int], num_train: int,
                num_validation: int, num_test: int, seed: int = 0) -> str:
  """The config name for a size and split sizes, e.g. '64x96_500-100-100'.

  Such names work wherever a config name does (``tfds.builder(
  'saliency_popout/64x96_500-100-100')``, ``tfds build saliency_popout
  --config 64x96_500-100-100_seed3``, the input pipeline's dataset name); the
  other parameters keep their defaults.
  """
  name = (f'{int(image_size[0])}x{int(image_size[1])}_{int(num_train)}-'
          f'{int(num_validation)}-{int(num_test)}')
  return name + (f'_seed{int(seed)}' if seed else '')


def parse_config_name(name: str) -> SaliencyPopoutConfig | None:
  """The config a `config_name` spec describes, or None if not a spec."""
  m = _SPEC.match(name)
  if not m:
    return None
  h, w, n_train, n_val, n_test, seed = m.groups()
  return SaliencyPopoutConfig(
      name=name, image_size=(int(h), int(w)), num_train=int(n_train),
      num_validation=int(n_val), num_test=int(n_test), seed=int(seed or 0),
      description=f'{h}x{w} images; {n_train} / {n_val} / {n_test}, seed '
      f'{seed or 0}.')


def fixation_density(fixations: np.ndarray, height: int, width: int,
                     sigma: float) -> np.ndarray:
  """Fixation counts blurred with a Gaussian, (H, W) uint8 with max 255."""
  counts = np.zeros((height, width), dtype=np.float64)
  if len(fixations):
    np.add.at(counts, (fixations[:, 0], fixations[:, 1]), 1.0)
  blurred = scipy.ndimage.gaussian_filter(counts, sigma, mode='constant')
  peak = blurred.max()
  if peak <= 0:
    return np.zeros((height, width), np.uint8)
  return np.round(blurred * (255.0 / peak)).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
  h = np.asarray(h, dtype=np.float64)
  i = np.floor(h * 6.0).astype(int) % 6
  f = h * 6.0 - np.floor(h * 6.0)
  p = np.full_like(h, v * (1.0 - s))
  q = v * (1.0 - s * f)
  t = v * (1.0 - s * (1.0 - f))
  vv = np.full_like(h, v)
  table = np.stack([
      np.stack([vv, t, p], -1), np.stack([q, vv, p], -1),
      np.stack([p, vv, t], -1), np.stack([p, q, vv], -1),
      np.stack([t, p, vv], -1), np.stack([vv, p, q], -1)], 0)
  return table[i, np.arange(len(h))]


class SaliencyPopout(common.SaliencyBuilder):
  """Generated odd-one-out scenes with simulated fixations (no download)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'The distractor size varies between scenes.',
  }
  BUILDER_CONFIGS = [
      SaliencyPopoutConfig(
          name='default',
          description='96x128 images; train 2000 / validation 200 / test 200.'),
      SaliencyPopoutConfig(
          name='tiny', image_size=(48, 64), num_train=64, num_validation=16,
          num_test=16, description='48x64 images; 64 / 16 / 16 (tests).'),
      SaliencyPopoutConfig(
          name='large', image_size=(240, 320), num_train=10000,
          num_validation=1000, num_test=1000,
          description='240x320 images; 10000 / 1000 / 1000.'),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  @classmethod
  def get_builder_config(cls, name, version=None):
    """A named config, or one parsed from a spec name (see `config_name`)."""
    config = super().get_builder_config(name, version)
    if config is None and isinstance(name, str):
      config = parse_config_name(name)
    return config

  def _info(self) -> tfds.core.DatasetInfo:
    extra = {
        'target': tfds.features.Tensor(
            shape=(2,), dtype=np.int32,
            doc="The target's centre, 0-based (row, col)."),
        'odd_feature': tfds.features.ClassLabel(
            names=list(ODD_FEATURES),
            doc='How the target differs from the distractors.'),
    }
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.saliency_features(extra, image_encoding='png'),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    sizes = {'train': self.builder_config.num_train,
             'validation': self.builder_config.num_validation,
             'test': self.builder_config.num_test}
    return {split: self._generate_examples(split, n)
            for split, n in sizes.items() if n > 0}

  def _generate_examples(self, split: str, num_examples: int):
    for i in range(num_examples):
      example = make_example(self.builder_config, split, i)
      # PIL's PNG encoder is much faster here than TFDS's TF-graph one.
      example['image'] = common.encode_png(example['image'])
      example['saliency'] = common.encode_png(example['saliency'])
      yield f'{split}_{i:06d}', example
