"""Baseline saliency maps.

`centre_bias_map` is the usual centre-bias baseline: observers look at the
middle of an image more than at its borders, whatever it shows. The evaluator
uses it as the information-gain baseline and as a reference row; a model that
does not beat it has learnt nothing about the images.
"""

from __future__ import annotations

import numpy as np

# Standard deviation of the centre-bias Gaussian as a fraction of the image's
# height and width.
CENTRE_BIAS_SIGMA = 0.25


def centre_bias_map(height: int, width: int,
                    sigma: float | tuple[float, float] = CENTRE_BIAS_SIGMA
                    ) -> np.ndarray:
  """An anisotropic Gaussian centred on the image, (H, W) float32, max 1.

  Args:
    height: map height in pixels.
    width: map width in pixels.
    sigma: standard deviation as a fraction of (height, width); one number
      applies to both. The Gaussian is evaluated at pixel centres, so the
      map is symmetric under flips.

  Returns:
    float32 array of shape (height, width) with values in (0, 1].
  """
  sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
  if height <= 0 or width <= 0:
    raise ValueError(f'Bad map size {height}x{width}.')
  y = (np.arange(height, dtype=np.float64) + 0.5 - height / 2) / (sy * height)
  x = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / (sx * width)
  g = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
  return (g / g.max()).astype(np.float32)
