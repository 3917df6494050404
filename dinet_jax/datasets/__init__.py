"""Saliency datasets as TensorFlow Datasets builders.

Importing this package registers the builders ``salicon`` (configs ``2015``,
``2017``), ``mit1003``, ``mit300``, ``cat2000`` and ``saliency_popout``, so
that ``tfds.builder('salicon/2017', data_dir=...)`` and
``tfds build salicon --imports dinet_jax.datasets`` work. The features every
builder produces are described in `dinet_jax.datasets.common`.

Prepared data lives in `DEFAULT_DATA_DIR` (``data/tfds``) and the user's
archives of the public datasets in `DEFAULT_MANUAL_DIR` (``data/``), both
relative to the current working directory; see ``data/README.md``. Build a
dataset with ``python -m dinet_jax.datasets build <name>[/<config>]``.
"""

from dinet_jax.datasets.common import (
    DEFAULT_DATA_DIR,
    DEFAULT_MANUAL_DIR,
    CorruptFileError,
    MissingFilesError,
    saliency_features,
)
from dinet_jax.datasets.cat2000 import Cat2000
from dinet_jax.datasets.mit1003 import Mit1003, Mit1003Config, kfold_splits
from dinet_jax.datasets.mit300 import Mit300
from dinet_jax.datasets.popout import SaliencyPopout, SaliencyPopoutConfig
from dinet_jax.datasets.salicon import Salicon
from dinet_jax.datasets.build import (
    NAMES,
    DatasetNotPreparedError,
    build_commands,
    ensure_prepared,
    get_builder,
    is_prepared,
    prepare,
)

__all__ = [
    'DEFAULT_DATA_DIR', 'DEFAULT_MANUAL_DIR', 'NAMES', 'Cat2000',
    'CorruptFileError', 'DatasetNotPreparedError', 'MissingFilesError',
    'Mit1003', 'Mit1003Config', 'Mit300', 'Salicon', 'SaliencyPopout',
    'SaliencyPopoutConfig', 'build_commands', 'ensure_prepared',
    'get_builder', 'is_prepared', 'kfold_splits', 'prepare',
    'saliency_features',
]
