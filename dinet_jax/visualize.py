"""A picture of predicted maps next to the ground truth, for READMEs and reports.

    python -m dinet_jax.visualize --workdir runs/default --output docs/default_predictions.png

Rows of (image | ground-truth map | predicted map) for the first validation images of
the run's dataset, at the model's input size.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np


def prediction_grid(workdir: str, *, num_images: int = 6, split: str | None = None,
                    checkpoint: str = 'best', data_dir: str | None = None) -> np.ndarray:
  """uint8 (num_images * H, 3 * W, 3) panels from the run's evaluation split."""
  from dinet_jax import evaluation, input_pipeline
  from dinet_jax.trained import load_trained

  model = load_trained(workdir, checkpoint)
  config = model.config
  if not config:
    raise ValueError(f'{workdir!r} is not a training workdir (no config.json).')
  batches = input_pipeline.create_eval_iterator(
      config['dataset'], split or config.get('eval_split', 'validation'),
      data_dir=data_dir or config['data_dir'], image_size=model.image_size,
      batch_size=num_images, num_devices=1)
  batch = next(iter(batches))
  preds = model(batch['image'])
  rows = [evaluation.panel(batch['image'][i], batch['saliency'][i, ..., 0], preds[i])
          for i in np.flatnonzero(batch['mask'])]
  return np.concatenate(rows, axis=0)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m dinet_jax.visualize',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--output', required=True, help='PNG file')
  parser.add_argument('--num_images', type=int, default=6)
  parser.add_argument('--split', default=None)
  parser.add_argument('--checkpoint', default='best')
  parser.add_argument('--scale', type=int, default=2, help='integer upscaling for display')
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from PIL import Image
  try:
    grid = prediction_grid(args.workdir, num_images=args.num_images, split=args.split,
                           checkpoint=args.checkpoint)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  grid = np.repeat(np.repeat(grid, args.scale, axis=0), args.scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  Image.fromarray(grid).save(args.output)
  print(f'Wrote {args.output} ({grid.shape[1]}x{grid.shape[0]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
