"""Evaluates trained DINet runs at original resolution with the standard saliency metrics.

    python eval.py --workdir runs/default
    python eval.py --workdir runs/salicon_320x480 --dataset salicon/2015 --split validation \
        --protocol salicon --output results/salicon.json
    python eval.py --workdir runs/a --ensemble runs/a,runs/b

Prints a table (the centre-bias baseline as a reference row), writes the means as JSON
(--output, default <first workdir>/eval/<dataset>_<split>.json) and per-image values as CSV.
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir (or checkpoint directory).')
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
flags.DEFINE_string('dataset', None, "e.g. 'salicon/2015'; default: the run's dataset.")
flags.DEFINE_string('split', None, "Default: the run's validation split.")
flags.DEFINE_string('data_dir', None, "Prepared TFDS data; default: the run's.")
flags.DEFINE_enum('protocol', 'mit', ['mit', 'salicon'], 'Metric definitions.')
flags.DEFINE_float('blur_sigma', 0.0, 'Gaussian blur of predictions, in pixels (0: none).')
flags.DEFINE_list('ensemble', None, 'Comma-separated workdirs whose maps are averaged.')
flags.DEFINE_list('metrics', None, 'Subset of metrics (default: all eight).')
flags.DEFINE_integer('batch_size', 8, 'Evaluation batch size.')
flags.DEFINE_string('output', None, 'JSON file for the means.')
flags.DEFINE_string('csv', None, 'CSV file for per-image values (default: next to --output).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from dinet_jax import eval_lib, evaluation

  workdirs = FLAGS.ensemble or [FLAGS.workdir]
  if not workdirs or not workdirs[0]:
    raise app.UsageError('Give --workdir or --ensemble.')
  names = tuple(FLAGS.metrics or evaluation.ALL_METRICS)
  try:
    rows, output, per_image = eval_lib.evaluate_runs(
        workdirs, checkpoint=FLAGS.checkpoint, dataset=FLAGS.dataset, split=FLAGS.split,
        data_dir=FLAGS.data_dir, protocol=FLAGS.protocol, blur_sigma=FLAGS.blur_sigma,
        batch_size=FLAGS.batch_size, metric_names=names, output=FLAGS.output,
        per_image_csv=FLAGS.csv, ensemble=bool(FLAGS.ensemble))
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(evaluation.format_table(rows, names))
  print(f'\nWrote {output} and {per_image}')
  return 0


if __name__ == '__main__':
  from dinet_jax import host_memory
  host_memory.restart_with_malloc_tuning()
  app.run(main)
