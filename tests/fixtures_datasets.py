"""Shared helpers for the dataset and input-pipeline tests.

The datasets are built from small files in the official layouts written by
`dinet_jax.datasets.fixtures` (real JPEG/PNG files and scipy-written .mat
structs), never from pre-converted shortcuts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from dinet_jax import datasets
from dinet_jax.datasets import fixtures

tfds.disable_progress_bar()

# A saliency_popout config named by its spec: 40x56 images, 20/10/6.
POPOUT = 'saliency_popout/40x56_20-10-6'


def write_all(manual: Path) -> dict[str, dict]:
  """Writes every dataset's fixture files; returns their expectations."""
  return {
      # SALICON 2017 as zip archives (1xN gaze), 2015 as folders (Nx1 gaze)
      # sharing the 2017 images.
      'salicon/2017': fixtures.write_salicon(
          manual, config='2017', archives=True, grayscale_first=True),
      'salicon/2015': fixtures.write_salicon(
          manual, config='2015', gaze_orientation='col', with_images=False,
          seed=1),
      'mit1003': fixtures.write_mit1003(manual, num_images=6),
      'mit300': fixtures.write_mit300(manual, archives=True),
      'cat2000': fixtures.write_cat2000(manual),
  }


@pytest.fixture(scope='session')
def built(tmp_path_factory):
  """All builders prepared from fixtures: (data_dir, manual_dir, expected)."""
  root = tmp_path_factory.mktemp('datasets')
  manual, data_dir = root / 'manual', root / 'tfds'
  expected = write_all(manual)
  for name in ('salicon/2017', 'salicon/2015', 'mit1003', 'mit1003/kfold5',
               'mit300', 'cat2000', POPOUT):
    datasets.prepare(name, data_dir, manual)
  return data_dir, manual, expected


def files_below(path: Path) -> list[str]:
  return sorted(os.path.relpath(os.path.join(r, f), path)
                for r, _, fs in os.walk(path) for f in fs)
