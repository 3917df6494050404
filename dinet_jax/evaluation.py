"""Evaluation at the original resolution: per-epoch validation and ``eval.py``.

Predictions are made at the model's input size, the padding is cropped away exactly and
the map resized back to each image's original size (``input_pipeline.undo_padding``),
then scored with ``dinet_jax.metrics`` against the original fixations and maps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from dinet_jax import input_pipeline, metrics
from dinet_jax.baselines import centre_bias_map

ALL_METRICS = ('auc_judd', 'auc_borji', 'sauc', 'nss', 'cc', 'kld', 'sim', 'information_gain')
# Higher is better for all but KLD (and the loss).
LOWER_IS_BETTER = frozenset({'kld', 'loss'})
SAUC_OTHER_IMAGES = 10  # the MIT benchmark draws negatives from 10 other images
# (model input size, function from a host eval batch to (B, H, W[, 1]) maps at that size)
Predictor = tuple[tuple[int, int], Callable[[dict[str, Any]], np.ndarray]]


def fixation_map(fixations: np.ndarray, count: int, hw: Sequence[int]) -> np.ndarray:
  """(H, W) float32 counts of the first ``count`` (row, col) fixations."""
  out = np.zeros(tuple(hw), np.float32)
  fix = np.asarray(fixations[:count], np.int64)
  if len(fix):
    np.add.at(out, (fix[:, 0], fix[:, 1]), 1.0)
  return out


def blur(maps: np.ndarray, sigma: float) -> np.ndarray:
  if sigma <= 0:
    return maps
  from scipy.ndimage import gaussian_filter
  return gaussian_filter(maps, sigma=sigma, mode='constant')


def score(saliency: np.ndarray, fixations: np.ndarray, density: np.ndarray, *,
          names: Sequence[str], baseline: np.ndarray | None = None,
          other_fixations: np.ndarray | None = None, protocol: str = 'mit') -> dict[str, np.ndarray]:
  """Per-image metrics for a stack of same-sized (N, H, W) maps, in one compiled pass
  (``protocol``: 'mit' or 'salicon', see ``dinet_jax.metrics``)."""
  out = metrics.evaluate(tuple(names), saliency, fixations, density, other_fixations,
                         baseline, protocol=protocol)
  return {k: np.asarray(v, np.float64).reshape(len(saliency)) for k, v in out.items()}


class Evaluator:
  """Scores predictions on a dataset split at original resolution.

  ``config`` provides ``dataset``, ``eval_split``, ``data_dir``, ``image_size`` and
  ``eval_batch_size``. Predict functions map a host batch
  (``input_pipeline.create_eval_iterator``) to (B, H, W[, 1]) maps at their input size.
  """

  def __init__(self, config: Any, par: Any = None, *, metric_names: Sequence[str] = ALL_METRICS,
               protocol: str = 'mit', blur_sigma: float = 0.0):
    self.config = config
    self.par = par
    self.names = tuple(metric_names)
    unknown = set(self.names) - set(ALL_METRICS)
    if unknown:
      raise ValueError(f'Unknown metrics {sorted(unknown)}; valid: {", ".join(ALL_METRICS)}')
    self.protocol = protocol
    self.blur_sigma = blur_sigma
    self._baseline = None
    self._other = None

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.config.image_size)

  def batches(self, split: str | None = None,
              image_size: tuple[int, int] | None = None) -> Iterator[dict[str, Any]]:
    per_process = self.config.eval_batch_size // jax.process_count()
    return input_pipeline.create_eval_iterator(
        self.config.dataset, split or self.config.eval_split, data_dir=self.config.data_dir,
        image_size=tuple(image_size or self.image_size), batch_size=per_process,
        with_originals=True, process_index=jax.process_index(),
        process_count=jax.process_count())

  def examples(self, predictors: Mapping[str, Predictor] | None,
               split: str | None = None) -> Iterator[dict[str, Any]]:
    """Yields per real example: ``image_id``, original ``density`` (H, W) in [0, 1],
    ``fixations`` (H, W) counts, and per predictor name its map at original size.

    ``predictors`` maps names to ``(image_size, predict)``; models of different input
    sizes (an ensemble) each read the split at their own size, in the same order.
    """
    predictors = dict(predictors or {})
    sizes = sorted({tuple(size) for size, _ in predictors.values()} or {self.image_size})
    streams = {size: self.batches(split, size) for size in sizes}
    for batches in zip(*streams.values()):
      by_size = dict(zip(streams, batches))
      batch = batches[0]
      preds = {}
      for name, (size, predict) in predictors.items():
        p = np.asarray(predict(by_size[tuple(size)]), np.float32)
        preds[name] = (tuple(size), p[..., 0] if p.ndim == 4 else p)
      for i in np.flatnonzero(np.asarray(batch['mask'])):
        if 'has_saliency' in batch and not batch['has_saliency'][i]:
          raise ValueError(
              f'{self.config.dataset}/{split or self.config.eval_split} has no ground-truth '
              f'maps (a test split): evaluate a split with maps, or export predictions with '
              f'python -m dinet_jax.predict.')
        hw = tuple(int(v) for v in batch['orig_size'][i])
        example = {
            'image_id': _text(batch['image_id'][i]),
            'density': np.asarray(batch['saliency_orig'][i], np.float32).reshape(hw) / 255.0,
            'fixations': fixation_map(batch['fixations'][i], int(batch['num_fixations'][i]), hw),
        }
        for name, (size, p) in preds.items():
          example[name] = blur(input_pipeline.undo_padding(p[i], hw, size), self.blur_sigma)
        yield example

  def _other_fixations(self, split: str | None) -> dict[str, Any]:
    """Fixations of the whole split, for the negatives of shuffled AUC."""
    if self._other is None:
      self._other = [(e['image_id'], np.argwhere(e['fixations'] > 0) /
                      np.asarray(e['fixations'].shape, np.float64), e['fixations'])
                     for e in self.examples(None, split)]
    return self._other

  def other_fixation_map(self, image_id: str, hw: tuple[int, int], split: str | None,
                         index: int) -> np.ndarray:
    """MIT: the fixations of 10 other images (seeded per image), rescaled to ``hw``.
    SALICON: all other images' fixated pixels, weighted by how many images fixated them."""
    pool = self._other_fixations(split)
    out = np.zeros(hw, np.float32)
    if self.protocol == 'salicon':
      for other_id, _, fix in pool:
        if other_id != image_id and fix.shape == hw:
          out += fix > 0
      return out
    rng = np.random.default_rng(index)
    candidates = [p for p in pool if p[0] != image_id]
    for j in rng.choice(len(candidates), size=min(SAUC_OTHER_IMAGES, len(candidates)),
                        replace=False):
      rel = candidates[j][1]
      rc = np.minimum((rel * np.asarray(hw)).astype(np.int64), np.asarray(hw) - 1)
      out[rc[:, 0], rc[:, 1]] = 1.0
    return out

  def score_examples(self, examples: Iterator[dict[str, Any]], split: str | None = None,
                     keys: Sequence[str] = ('saliency',),
                     group: int = 32) -> dict[str, dict[str, np.ndarray]]:
    """Per-image metrics of each prediction key (e.g. several ensemble members), in
    example order. Same-sized images are scored together, ``group`` at a time."""
    pending: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    results: dict[str, dict[str, dict[int, float]]] = {k: defaultdict(dict) for k in keys}
    ids = []

    def flush(hw):
      items = pending.pop(hw, [])
      if not items:
        return
      stack = lambda key: np.stack([e[key] for _, e in items])
      other = (np.stack([self.other_fixation_map(e['image_id'], hw, split, i)
                         for i, e in items]) if 'sauc' in self.names else None)
      for key in keys:
        values = score(stack(key), stack('fixations'), stack('density'), names=self.names,
                       baseline=centre_bias_map(*hw)[None], other_fixations=other,
                       protocol=self.protocol)
        for name, v in values.items():
          for (index, _), value in zip(items, v):
            results[key][name][index] = float(value)

    for index, e in enumerate(examples):
      hw = e['density'].shape
      ids.append(e['image_id'])
      pending[hw].append((index, {k: e[k] for k in (*keys, 'fixations', 'density',
                                                     'image_id')}))
      if len(pending[hw]) >= group:
        flush(hw)
    for hw in list(pending):
      flush(hw)
    out = {}
    for key in keys:
      out[key] = {name: np.asarray([by_index[i] for i in range(len(ids))])
                  for name, by_index in results[key].items()}
      out[key]['image_id'] = np.asarray(ids)
    return out

  def baseline(self, split: str | None = None) -> dict[str, float]:
    """Mean metrics of the centre-bias map on the split (cached)."""
    if self._baseline is None:
      def with_baseline(examples):
        for e in examples:
          e['saliency'] = centre_bias_map(*e['density'].shape)
          yield e
      scores = self.score_examples(with_baseline(self.examples(None, split)), split)
      self._baseline = means(scores['saliency'])
    return self._baseline

  def evaluate(self, state: Any, split: str | None = None, *,
               num_images: int = 0) -> dict[str, Any]:
    """Validation loss (at model size, padding excluded from the mean) and metrics at
    original size for the training state on ``self.par``; also up to ``num_images``
    (image, ground truth, prediction) triples at model size for summaries."""
    sums = {'loss_sum': 0.0, 'count': 0.0}
    images = []

    def predict(batch):
      preds, s = self.par.eval_step(state, batch)
      for k in sums:
        sums[k] += s[k]
      if len(images) < num_images:
        for i in np.flatnonzero(batch['mask'])[:num_images - len(images)]:
          images.append((batch['image'][i], batch['saliency'][i, ..., 0], preds[i, ..., 0]))
      return preds

    examples = self.examples({'saliency': (self.image_size, predict)}, split)
    scores = self.score_examples(examples, split)['saliency']
    result = means(scores)
    total = _allreduce(np.array([sums['loss_sum'], sums['count']]))
    result['loss'] = float(total[0] / max(total[1], 1.0))
    return {'means': result, 'per_image': scores, 'images': images}


def means(scores: dict[str, np.ndarray]) -> dict[str, float]:
  out = {}
  for name, values in scores.items():
    if name == 'image_id':
      continue
    values = np.asarray(values, np.float64)
    total = _allreduce(np.array([np.nansum(values), np.sum(np.isfinite(values))]))
    out[name] = float(total[0] / total[1]) if total[1] else float('nan')
  return out


def _allreduce(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def format_side_by_side(model: dict[str, float], baseline: dict[str, float]) -> str:
  """'loss 0.31  cc 0.61 (centre bias 0.22)  ...' for the epoch summary line."""
  parts = [f'loss {model["loss"]:.4f}'] if 'loss' in model else []
  for name, value in model.items():
    if name == 'loss':
      continue
    ref = baseline.get(name)
    parts.append(f'{name} {value:.3f}' + (f' (centre {ref:.3f})' if ref is not None else ''))
  return '  '.join(parts)


def format_table(rows: dict[str, dict[str, float]], names: Sequence[str]) -> str:
  """A fixed-width table, one row per model."""
  width = max([len(r) for r in rows] + [5])
  head = f'{"model":<{width}}  ' + '  '.join(f'{n:>16}' for n in names)
  lines = [head, '-' * len(head)]
  for row, values in rows.items():
    lines.append(f'{row:<{width}}  ' + '  '.join(f'{values.get(n, float("nan")):>16.4f}'
                                                 for n in names))
  return '\n'.join(lines)


def write_summaries(writer: Any, val: dict[str, float], images: Any, step: int,
                    baseline: dict[str, float]) -> None:
  for name, value in val.items():
    writer.scalar(f'val/{name}', value, step)
  for name, value in baseline.items():
    writer.scalar(f'centre_bias/{name}', value, step)
  if images:
    writer.image('val/image_truth_prediction', np.stack([panel(*t) for t in images]), step,
                 max_outputs=len(images))
  writer.flush()


def panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """uint8 (H, 3W, 3): the de-normalised image, the ground truth and the prediction
  (min-max scaled, since distribution losses leave the maps' scale free)."""
  mean, std = np.asarray(input_pipeline.IMAGENET_MEAN), np.asarray(input_pipeline.IMAGENET_STD)
  rgb = np.clip((np.asarray(image) * std + mean) * 255, 0, 255).astype(np.uint8)
  gray = lambda m: np.repeat((np.clip(np.asarray(m), 0, 1) * 255).astype(np.uint8)[..., None],
                             3, axis=-1)
  pred = np.asarray(pred, np.float32)
  lo, hi = float(pred.min()), float(pred.max())
  pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
  return np.concatenate([rgb, gray(truth), gray(pred)], axis=1)
