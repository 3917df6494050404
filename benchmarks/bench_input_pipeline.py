"""Throughput of the training input pipeline on SALICON-sized images.

Writes a synthetic SALICON-layout fixture (480x640 JPEGs, PNG maps, .mat
fixations; nothing is downloaded) into a temporary folder, prepares it with
the `salicon` builder, and times `create_train_iterator` producing 320x480
batches (decode, aspect-preserving resize, padding, normalisation, flips).

  python benchmarks/bench_input_pipeline.py [--num_images 200] [--epochs 3]

Prints examples/s with all the cores this process may use and with a single
tf.data thread; the per-core figure tells how many cores keep a GPU fed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def _run(args, data_dir: str, threads: int | None) -> tuple[float, float]:
  """Median examples/s (wall clock) and examples per CPU-second."""
  from dinet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  rates, per_cpu = [], []
  for epoch in range(args.epochs):
    it = input_pipeline.create_train_iterator(
        'salicon/2017', 'train', data_dir=data_dir,
        image_size=tuple(args.image_size), batch_size=args.batch_size,
        seed=0, epoch=epoch, flip=True,
        with_fixation_maps=args.with_fixation_maps, num_devices=1,
        threads=threads)
    next(it)  # Start-up (graph building, first reads) is not counted.
    start, cpu, n = time.perf_counter(), _cpu_seconds(), 0
    for batch in it:
      n += batch['image'].shape[0]
    rates.append(n / (time.perf_counter() - start))
    per_cpu.append(n / (_cpu_seconds() - cpu))
  return float(np.median(rates)), float(np.median(per_cpu))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=200)
  parser.add_argument('--batch_size', type=int, default=10)
  parser.add_argument('--image_size', type=int, nargs=2, default=(320, 480))
  parser.add_argument('--epochs', type=int, default=3,
                      help='timed epochs per setting (the median is shown)')
  parser.add_argument('--with_fixation_maps', action='store_true')
  parser.add_argument('--antialias', type=int, choices=(0, 1), default=None,
                      help='override input_pipeline.RESIZE_ANTIALIAS '
                      '(for comparison only)')
  parser.add_argument('--work_dir', default=None,
                      help='where to write the fixture (default: a temp dir)')
  args = parser.parse_args()

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from dinet_jax import datasets  # pylint: disable=g-import-not-at-top
  from dinet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dinet_jax.datasets import fixtures  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  if args.antialias is not None:
    input_pipeline.RESIZE_ANTIALIAS = bool(args.antialias)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
      else os.cpu_count()
  with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
    manual, data_dir = os.path.join(tmp, 'manual'), os.path.join(tmp, 'tfds')
    start = time.perf_counter()
    fixtures.write_salicon(
        manual, counts={'train': args.num_images, 'val': 2, 'test': 2},
        size=(480, 640), observers=15, jpeg_quality=90)
    written = time.perf_counter() - start
    start = time.perf_counter()
    datasets.prepare('salicon/2017', data_dir, manual)
    built = time.perf_counter() - start
    jpeg_kb = np.mean([
        os.path.getsize(os.path.join(r, f)) for r, _, fs in
        os.walk(os.path.join(manual, 'salicon', 'images', 'train'))
        for f in fs]) / 1024
    print(f'fixture: {args.num_images} train images 480x640 '
          f'(JPEG q90, {jpeg_kb:.0f} KiB each) written in {written:.1f}s, '
          f'built in {built:.1f}s ({args.num_images / built:.0f} images/s)')
    print(f'pipeline: 480x640 JPEG -> {args.image_size[0]}x{args.image_size[1]}'
          f' batches of {args.batch_size}, flips, antialias '
          f'{input_pipeline.RESIZE_ANTIALIAS}'
          f'{", fixation maps" if args.with_fixation_maps else ""}; '
          f'median of {args.epochs} epochs')
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'  (load average before timing: {load:.1f} on {cores} cores; '
          'examples per CPU-second depends little on other processes)')
    for label, threads in ((f'all {cores} cores', None),
                           ('1 tf.data thread', 1)):
      rate, per_cpu = _run(args, data_dir, threads)
      print(f'  {label:>16}: {rate:7.1f} examples/s wall clock, '
            f'{per_cpu:6.1f} examples per CPU-second')


if __name__ == '__main__':
  main()
