"""Trains DINet: ``python train.py --workdir DIR [--config configs/NAME.py] [--config.x=y]``.

With no --config it trains the reduced default model on the embedded saliency_popout
data (generated on first use). Rerunning on the same workdir resumes. For several
hosts, start one process per host with --coordinator_address, --num_processes and
--process_id (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
environment), and the same --workdir on a shared file system.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and summaries.')
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'default.py'),
    'Training config file.', lock_config=True)
flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
                    'host:port of process 0, for multi-process training.')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process training).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process training).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if not FLAGS['verbosity'].present:  # orbax and tfds log every step at INFO
    logging.set_verbosity(logging.WARNING)
  import jax
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  from dinet_jax import training
  try:
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  from dinet_jax import host_memory
  host_memory.restart_with_malloc_tuning()
  app.run(main)
