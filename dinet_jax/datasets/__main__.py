"""Command line: ``python -m dinet_jax.datasets build <name>[/<config>]``.

Builds a dataset into the data dir (default ``data/tfds``) from the files in
the manual dir (default ``data/``); ``list`` shows the datasets, their
configs and which are prepared.
"""

import argparse
import sys

from dinet_jax import datasets


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m dinet_jax.datasets',
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  build = sub.add_parser('build', help='prepare a dataset')
  build.add_argument('dataset', help="e.g. salicon/2017, mit1003/kfold10, "
                     "saliency_popout")
  build.add_argument('--data_dir', default=datasets.DEFAULT_DATA_DIR)
  build.add_argument('--manual_dir', default=datasets.DEFAULT_MANUAL_DIR)
  build.add_argument('--overwrite', action='store_true',
                     help='rebuild even if already prepared')
  lst = sub.add_parser('list', help='list datasets and configs')
  lst.add_argument('--data_dir', default=datasets.DEFAULT_DATA_DIR)
  args = parser.parse_args(argv)

  if args.command == 'build':
    try:
      builder = datasets.prepare(args.dataset, args.data_dir, args.manual_dir,
                                 overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    splits = ', '.join(f'{k} {v.num_examples}'
                       for k, v in builder.info.splits.items())
    print(f'{builder.info.full_name} prepared in {builder.data_path}: {splits}')
    return 0

  for name in datasets.NAMES:
    cls = datasets.get_builder(name, args.data_dir).__class__
    configs = [c.name for c in cls.BUILDER_CONFIGS] or [None]
    for config in configs:
      full = f'{name}/{config}' if config else name
      state = ('prepared' if datasets.is_prepared(
          datasets.get_builder(full, args.data_dir)) else '-')
      print(f'{full:24s} {state}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
