"""A trained DINet restored from a workdir or checkpoint directory, ready to predict."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from dinet_jax import checkpoints, inference
from dinet_jax.models import create_model


@dataclasses.dataclass
class TrainedModel:
  """Model, variables and input size of a checkpoint; ``__call__`` maps normalised NHWC
  images at ``image_size`` to (B, H, W) maps in [0, 1] (on CPU a few images at a time,
  in concurrent calls, see :mod:`dinet_jax.inference`)."""

  model: Any
  variables: dict[str, Any]
  image_size: tuple[int, int]
  meta: dict[str, Any]
  source: str

  def __post_init__(self):
    self.variables = jax.device_put(self.variables)
    # With the Winograd kernel transforms computed once (in the variables from here on).
    self.variables = inference.prepare_variables(self.model, self.variables, self.image_size)
    self._apply = inference.streamed_apply(self.model, lambda maps: maps[..., 0])

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = (images.astype(np.float32) if isinstance(images, jax.Array)
              else np.asarray(images, np.float32))  # no copy of float32 arrays
    return np.asarray(self._apply(self.variables, images))

  @property
  def config(self) -> dict[str, Any]:
    """The run's config.json when the checkpoint came from a workdir (else {})."""
    path = os.path.join(self.source, 'config.json')
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f)
    return {}


def load_trained(path: str, which: str = 'best') -> TrainedModel:
  """Restores ``which`` ('best', 'latest' or a step) from a training workdir or a
  checkpoint directory; the model is rebuilt from the config stored in the checkpoint."""
  variables, meta = checkpoints.load_checkpoint(path, which)
  if 'model' not in meta or 'image_size' not in meta:
    raise ValueError(f'The checkpoint at {path!r} has no model config in its metadata; '
                     f'it was not written by dinet_jax.training.')
  model = create_model(meta['model'])
  return TrainedModel(model=model, variables=variables,
                      image_size=tuple(int(v) for v in meta['image_size']), meta=meta,
                      source=os.path.abspath(path))
