"""``evaluate_runs``: the logic behind ``eval.py`` (single models and ensembles)."""

from __future__ import annotations

import csv
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from dinet_jax import evaluation
from dinet_jax.checkpoints import write_json
from dinet_jax.trained import TrainedModel, load_trained

BASELINE_ROW = 'centre bias'
ENSEMBLE_ROW = 'ensemble'


def _row_name(path: str, taken: set[str]) -> str:
  name = os.path.basename(os.path.normpath(path)) or path
  while name in taken:
    name += "'"
  return name


def evaluate_runs(workdirs: Sequence[str], *, checkpoint: str = 'best',
                  dataset: str | None = None, split: str | None = None,
                  data_dir: str | None = None, protocol: str = 'mit', blur_sigma: float = 0.0,
                  batch_size: int = 8, metric_names: Sequence[str] = evaluation.ALL_METRICS,
                  output: str | None = None, per_image_csv: str | None = None,
                  ensemble: bool = False) -> tuple[dict[str, dict[str, float]], str, str]:
  """Evaluates the checkpoints of ``workdirs`` (and their average with ``ensemble``).

  The dataset, split and data dir default to those of the first run's config. Returns
  ``({row: {metric: mean}}, json_path, csv_path)`` with a centre-bias reference row; the
  means go to ``output`` (default ``<first workdir>/eval/<dataset>_<split>.json``), the
  per-image values to ``per_image_csv`` (default: beside it).
  """
  models: dict[str, TrainedModel] = {}
  for path in workdirs:
    models[_row_name(path, set(models))] = load_trained(path, checkpoint)
  first = next(iter(models.values()))
  run_config = first.config
  config = ml_collections.ConfigDict({
      'dataset': dataset or run_config.get('dataset') or first.meta.get('dataset'),
      'eval_split': split or run_config.get('eval_split', 'validation'),
      'data_dir': data_dir or run_config.get('data_dir', 'data/tfds'),
      'image_size': tuple(first.image_size),
      'eval_batch_size': batch_size,
  })
  if not config.dataset:
    raise ValueError('No dataset given and none recorded with the checkpoint: pass --dataset.')
  evaluator = evaluation.Evaluator(config, metric_names=metric_names, protocol=protocol,
                                   blur_sigma=blur_sigma)

  predictors = {name: (m.image_size, lambda batch, m=m: m(batch['image']))
                for name, m in models.items()}
  keys = list(models)
  examples = evaluator.examples(predictors)
  if ensemble:
    examples = _with_ensemble(examples, tuple(keys))
    keys.append(ENSEMBLE_ROW)
  per_image = evaluator.score_examples(examples, keys=keys)
  rows = {BASELINE_ROW: evaluator.baseline()}
  rows.update({k: evaluation.means(v) for k, v in per_image.items()})
  if not output:
    tag = f'{"ensemble_" if ensemble else ""}{config.dataset}_{config.eval_split}'
    output = os.path.join(first.source, 'eval', tag.replace('/', '_') + '.json')
  per_image_csv = per_image_csv or os.path.splitext(output)[0] + '_per_image.csv'
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  main_row = ENSEMBLE_ROW if ensemble else keys[0]
  write_json(output, {**rows[main_row], 'models': rows, 'dataset': config.dataset,
                      'split': config.eval_split, 'protocol': protocol,
                      'blur_sigma': blur_sigma, 'checkpoint': checkpoint,
                      'num_images': int(len(per_image[keys[0]]['image_id']))})
  write_per_image_csv(per_image_csv, per_image, evaluator.names)
  return rows, output, per_image_csv


def _with_ensemble(examples, keys):
  """Adds the average of the members' maps (each first scaled to [0, 1])."""
  for e in examples:
    maps = [_minmax(e[k]) for k in keys]
    e[ENSEMBLE_ROW] = np.mean(maps, axis=0)
    yield e


def _minmax(m: np.ndarray) -> np.ndarray:
  lo, hi = float(m.min()), float(m.max())
  return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def write_per_image_csv(path: str, per_image: dict[str, dict[str, np.ndarray]],
                        names: Sequence[str]) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['model', 'image_id', *names])
    for model, scores in per_image.items():
      for i, image_id in enumerate(scores['image_id']):
        writer.writerow([model, image_id, *(f'{scores[n][i]:.6f}' for n in names)])
  os.replace(tmp, path)
