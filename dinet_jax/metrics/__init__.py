"""Saliency evaluation metrics in JAX, following the MIT saliency benchmark by default.

Every metric takes maps of shape (H, W) and returns a float, or a batch (N, H, W) and
returns an (N,) array of per-image values. Inputs may be numpy or jax arrays of any real
dtype. The ground truth (fixation map, or density map for cc/kld/sim) sets the size: a
saliency or baseline map of another size is resized to it bilinearly (antialiased), as
the MIT code resizes with ``imresize`` (which is bicubic there). Fixation maps are binary
or counts (>= 0; MIT metrics use the fixated pixels once, SALICON ones the counts).

Undefined cases give NaN, never a made-up number: no fixations (every metric that uses
them), a constant saliency map (NSS, CC, SIM unless the map is all zero, information gain,
AUC-Borji, sAUC, and AUC-Judd with ``jitter=False``; with ``jitter=True`` AUC-Judd gives
its expectation over random tie-breaking), a constant density map (CC), no candidate
negatives (sAUC). NaN or infinite inputs, negative fixation maps, mismatched shapes, and
negative maps for KLD raise ``ValueError`` naming the argument.

``protocol='salicon'`` reproduces the 2015 SALICON evaluation code where it differs:
``auc_borji`` becomes its 'AUC' (one draw of 100,000 random negatives, thresholds
0:0.01:max exclusive, fixations weighted by count), ``sauc`` uses all fixations of the
other images of the evaluated set weighted by how many images fixated each pixel (the
``other_fixation_map`` then holds those counts; for a batch it defaults to the counts over
the batch) with the image's own fixated pixels excluded, ``nss`` averages over all
fixations (counts) with the population std, and ``cc`` correlates with the fixation map
blurred by a Gaussian of sigma 19 px (scipy 'reflect' borders) instead of the density
map. AUC-Judd, KLD, SIM and information gain have no SALICON variant and are unchanged.
Resizing stays bilinear (the SALICON code used cubic spline zoom).

Batches are split into chunks of about 0.7 megapixels per device, each compiled once per
shape and fixation-count bucket (a power of two) and cached, so per-image calls at the
same size do not recompile. With several local devices (e.g.
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` on a 2-core CPU) a large batch runs
on all of them at once (``shard_map``).
"""

from __future__ import annotations

from typing import Optional

from dinet_jax.metrics._api import (METRIC_NAMES, PROTOCOLS, ArrayLike, Result, evaluate)
from dinet_jax.metrics._maps import MATLAB_EPS, gaussian_operator

__all__ = ['auc_judd', 'auc_borji', 'sauc', 'nss', 'cc', 'kld', 'sim', 'information_gain',
           'compute_all', 'evaluate', 'METRIC_NAMES', 'PROTOCOLS', 'MATLAB_EPS']


def auc_judd(saliency_map: ArrayLike, fixation_map: ArrayLike, *, jitter: bool = True
             ) -> Result:
  """AUC-Judd: thresholds at the saliency values of fixated pixels, all other pixels as
  negatives, trapezoid area of the ROC curve.

  The MIT code breaks ties by adding a random 1e-7 jitter; ``jitter=True`` returns the
  expectation of the score over that random tie-breaking (deterministic; identical to the
  unjittered score when the map has no ties; it ignores the reordering of distinct values
  closer than 1e-7 that the jitter also causes). ``jitter=False`` gives the unjittered
  score (ties count as detected together), where a constant map gives NaN.
  """
  return evaluate(('auc_judd',), saliency_map, fixation_map, jitter=jitter)['auc_judd']


def auc_borji(saliency_map: ArrayLike, fixation_map: ArrayLike, *, n_splits: int = 100,
              step: float = 0.1, seed: int = 0, protocol: str = 'mit') -> Result:
  """AUC-Borji: per split, as many negatives as fixations drawn uniformly (with
  replacement) from all pixels; thresholds 0:step:max on the min-max normalized map; mean
  area over ``n_splits`` splits. The draws depend on ``seed`` only (not on the batch).
  ``protocol='salicon'``: the SALICON 'AUC' (see module doc)."""
  return evaluate(('auc_borji',), saliency_map, fixation_map, protocol=protocol,
                  n_splits=n_splits, step=step, seed=seed)['auc_borji']


def sauc(saliency_map: ArrayLike, fixation_map: ArrayLike,
         other_fixation_map: Optional[ArrayLike], *, n_splits: int = 100, step: float = 0.1,
         seed: int = 0, protocol: str = 'mit') -> Result:
  """Shuffled AUC: like AUC-Borji, but per split the negatives are min(#fixations,
  #candidates) pixels drawn without replacement from the pixels fixated on other images
  (``other_fixation_map > 0``, e.g. the union of 10 other images' fixation maps).

  ``other_fixation_map`` is (H, W), (1, H, W) or per image (N, H, W). With
  ``protocol='salicon'`` it holds per-pixel fixation counts over the evaluated set and may
  be None for a batch (then computed from the batch).
  """
  if other_fixation_map is None and (protocol == 'mit' or getattr(fixation_map, 'ndim', 3)
                                     == 2):
    raise ValueError('sauc needs other_fixation_map (fixations of other images)')
  return evaluate(('sauc',), saliency_map, fixation_map, None, other_fixation_map,
                  protocol=protocol, n_splits=n_splits, step=step, seed=seed)['sauc']


def nss(saliency_map: ArrayLike, fixation_map: ArrayLike, *, protocol: str = 'mit'
        ) -> Result:
  """Normalized scanpath saliency: mean of (S - mean S) / std S over fixated pixels
  (MIT: each fixated pixel once, std with N - 1; SALICON: count-weighted, std with N)."""
  return evaluate(('nss',), saliency_map, fixation_map, protocol=protocol)['nss']


def cc(saliency_map: ArrayLike, density_map: ArrayLike, *, protocol: str = 'mit') -> Result:
  """Pearson correlation between the saliency map and the density map. With
  ``protocol='salicon'`` the second argument is the fixation map, which is binarized and
  blurred with sigma 19 px first."""
  if protocol == 'salicon':
    return evaluate(('cc',), saliency_map, density_map, protocol=protocol)['cc']
  return evaluate(('cc',), saliency_map, None, density_map, protocol=protocol)['cc']


def kld(saliency_map: ArrayLike, density_map: ArrayLike) -> Result:
  """KL divergence of the density from the saliency map as distributions:
  sum Q log(eps + Q / (P + eps)), eps = 2.2204e-16 (an all-zero map is left as is)."""
  return evaluate(('kld',), saliency_map, None, density_map)['kld']


def sim(saliency_map: ArrayLike, density_map: ArrayLike) -> Result:
  """Similarity (histogram intersection) of the min-max then sum normalized maps."""
  return evaluate(('sim',), saliency_map, None, density_map)['sim']


def information_gain(saliency_map: ArrayLike, fixation_map: ArrayLike,
                     baseline_map: ArrayLike) -> Result:
  """Information gain over a baseline map (e.g. centre bias): mean over fixated pixels of
  log2(eps + P) - log2(eps + B), both maps min-max then sum normalized. The baseline is
  (H, W) or per image and is resized to the fixation map's size."""
  if baseline_map is None:
    raise ValueError('information_gain needs baseline_map')
  return evaluate(('information_gain',), saliency_map, fixation_map,
                  baseline_map=baseline_map)['information_gain']


def compute_all(saliency_map: ArrayLike, fixation_map: ArrayLike, density_map: ArrayLike, *,
                baseline_map: Optional[ArrayLike] = None,
                other_fixation_map: Optional[ArrayLike] = None, protocol: str = 'mit',
                jitter: bool = True, n_splits: int = 100, step: float = 0.1, seed: int = 0
                ) -> dict[str, Result]:
  """All eight metrics in one compiled pass: keys ``auc_judd, auc_borji, sauc, nss, cc,
  kld, sim, information_gain``. Without ``baseline_map`` information gain is NaN; without
  ``other_fixation_map`` sAUC is NaN (MIT) or uses the batch's fixations (SALICON)."""
  return evaluate(METRIC_NAMES, saliency_map, fixation_map, density_map, other_fixation_map,
                  baseline_map, protocol=protocol, jitter=jitter, n_splits=n_splits,
                  step=step, seed=seed)
