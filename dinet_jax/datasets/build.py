"""Building the datasets: `ensure_prepared`, `prepare` and their commands."""

from __future__ import annotations

import os
import shlex

import tensorflow_datasets as tfds

from dinet_jax.datasets import common

# Datasets that are generated locally, so `ensure_prepared` builds them.
GENERATED = ('saliency_popout',)
NAMES = ('salicon', 'mit1003', 'mit300', 'cat2000', 'saliency_popout')


class DatasetNotPreparedError(FileNotFoundError):
  """A dataset that needs manual files is not prepared yet."""


def split_name(dataset_name: str) -> tuple[str, str | None]:
  """'salicon/2017' -> ('salicon', '2017'); 'mit300' -> ('mit300', None)."""
  name, _, config = dataset_name.partition('/')
  if name not in NAMES:
    raise ValueError(f'Unknown dataset {dataset_name!r}; this package '
                     f'provides {", ".join(NAMES)}.')
  return name, (config.split(':')[0] or None)


def get_builder(dataset_name: str, data_dir: str | os.PathLike | None = None
                ) -> tfds.core.DatasetBuilder:
  """The registered builder for 'name[/config]' with the project's data dir."""
  split_name(dataset_name)  # Validates the name.
  data_dir = os.fspath(data_dir or common.DEFAULT_DATA_DIR)
  return tfds.builder(dataset_name, data_dir=data_dir)


def build_commands(dataset_name: str, data_dir=None, manual_dir=None
                   ) -> list[str]:
  """Shell commands (run from the repo root) that prepare a dataset."""
  name, config = split_name(dataset_name)
  data_dir = os.fspath(data_dir or common.DEFAULT_DATA_DIR)
  manual_dir = os.fspath(manual_dir or common.DEFAULT_MANUAL_DIR)
  q = shlex.quote
  ours = (f'python -m dinet_jax.datasets build {q(dataset_name)} '
          f'--data_dir {q(data_dir)} --manual_dir {q(manual_dir)}')
  theirs = f'tfds build {name} '
  if config:
    theirs += f'--config {q(config)} '
  theirs += (f'--imports dinet_jax.datasets --data_dir {q(data_dir)} '
             f'--manual_dir {q(manual_dir)}')
  # TFDS 4.9.10's `tfds` command imports these at start-up.
  theirs += '  # needs apache-beam and mlcroissant installed'
  return [ours, theirs]


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return os.path.exists(os.path.join(os.fspath(builder.data_path),
                                     'dataset_info.json'))


def prepare(dataset_name: str, data_dir=None, manual_dir=None, *,
            overwrite: bool = False) -> tfds.core.DatasetBuilder:
  """Builds a dataset (any of them) unless already prepared; returns it."""
  builder = get_builder(dataset_name, data_dir)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  config = tfds.download.DownloadConfig(
      manual_dir=os.path.abspath(manual_dir or common.DEFAULT_MANUAL_DIR),
      download_mode=mode, try_download_gcs=False)
  builder.download_and_prepare(download_config=config)
  return builder


def ensure_prepared(dataset_name: str, data_dir=None, manual_dir=None
                    ) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder; builds generated datasets if needed.

  `saliency_popout` (any config) is generated here on first use (seconds for
  the default config). The real datasets need the user's files in the
  manual dir: if one is not prepared yet this raises
  `DatasetNotPreparedError` with the commands that prepare it.

  Args:
    dataset_name: 'name' or 'name/config', e.g. 'salicon/2017'.
    data_dir: where prepared datasets live (default `DEFAULT_DATA_DIR`).
    manual_dir: where the user's archives are (default `DEFAULT_MANUAL_DIR`).
  """
  name, _ = split_name(dataset_name)
  builder = get_builder(dataset_name, data_dir)
  if is_prepared(builder):
    return builder
  if name in GENERATED:
    return prepare(dataset_name, data_dir, manual_dir)
  commands = '\n  '.join(build_commands(dataset_name, data_dir, manual_dir))
  raise DatasetNotPreparedError(
      f'{dataset_name} is not prepared in {builder.data_path}: place its '
      f'files in {os.path.join(manual_dir or common.DEFAULT_MANUAL_DIR, name)}'
      ' (see data/README.md), then build it with `python -m '
      'dinet_jax.datasets build` or `tfds build`, from the repository root:'
      f'\n  {commands}')
