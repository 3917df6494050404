"""Saliency training losses as a small, explicit family.

A loss is named by a string. Distribution losses are ``<normalization>_<distance>``:

* normalizations (per sample, summed over H, W, C; ``EPS = 1e-7`` as in the authors' code)

  - ``linear``:  ``x / (EPS + sum x)``                    (paper Eq. 5)
  - ``softmax``: ``exp(x) / sum exp(x)``, via log-sum-exp  (paper Eq. 4)
  - ``none``:    ``x``

* distances between the normalized prediction ``P`` and target ``Q`` (summed per sample)

  - ``tvd``:           ``0.5 * sum |P - Q|``                     (the paper's loss)
  - ``kld``:           ``sum Q * (log Q - log P)``, with ``log(EPS + .)`` for
                       ``linear``/``none`` and exact log-softmax for ``softmax``
  - ``chisq``:         ``sum (P - Q)^2 / (P + Q + EPS)``
  - ``bhattacharyya``: ``-log(EPS + sum sqrt(P * Q))``
  - ``l1``:            ``sum |P - Q|``        (``none_l1`` is the paper's l1-norm)
  - ``l2``:            ``sum (P - Q)^2``

Metric losses: ``nss`` (``-NSS``, needs fixation maps), ``cc`` (``-CC``),
``one_minus_cc`` (``1 - CC``) and ``bce`` (binary cross-entropy, mean over pixels,
predictions clipped to ``[EPS, 1 - EPS]``).

``get_loss("linear_tvd + 0.1 * nss")`` returns the weighted sum. Every loss maps
``(pred, target_map, fixation_map=None)`` with NHWC arrays ``(N, H, W, 1)`` to the batch
mean of the per-sample losses, computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp

EPS = 1e-7

Array = jax.Array
LossFn = Callable[..., Array]

NORMALIZATIONS = ('linear', 'softmax', 'none')
DISTANCES = ('tvd', 'kld', 'chisq', 'bhattacharyya', 'l1', 'l2')
METRIC_LOSSES = ('nss', 'cc', 'one_minus_cc', 'bce')


def _sum(x: Array) -> Array:
  """Per-sample sum over every axis but the first."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def _mean(x: Array) -> Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)


def normalize(x: Array, kind: str, eps: float = EPS) -> tuple[Array, Array]:
  """Returns ``(p, log_p)`` for the per-sample normalization ``kind``.

  ``linear``: ``x / (eps + sum x)``; ``softmax``: stable softmax over all non-batch axes;
  ``none``: ``x``. ``log_p`` is exact for ``softmax`` and ``log(eps + p)`` otherwise.
  """
  x = jnp.asarray(x, jnp.float32)
  if kind == 'linear':
    p = x / (eps + _sum(x))
    return p, jnp.log(eps + p)
  if kind == 'softmax':
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=tuple(range(1, x.ndim)), keepdims=True))
    log_p = shifted - jnp.log(_sum(jnp.exp(shifted)))
    return jnp.exp(log_p), log_p
  if kind == 'none':
    return x, jnp.log(eps + x)
  raise ValueError(f'unknown normalization {kind!r}; valid: {", ".join(NORMALIZATIONS)}')


def _safe_sqrt(x: Array) -> Array:
  """sqrt with a zero (not NaN/inf) gradient at x == 0."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _distance(kind: str, p: Array, log_p: Array, q: Array, log_q: Array) -> Array:
  """Per-sample distance, shape (N,)."""
  if kind == 'tvd':
    d = 0.5 * _sum(jnp.abs(p - q))
  elif kind == 'kld':
    d = _sum(q * (log_q - log_p))
  elif kind == 'chisq':
    d = _sum(jnp.square(p - q) / (p + q + EPS))
  elif kind == 'bhattacharyya':
    d = -jnp.log(EPS + _sum(_safe_sqrt(p * q)))
  elif kind == 'l1':
    d = _sum(jnp.abs(p - q))
  elif kind == 'l2':
    d = _sum(jnp.square(p - q))
  else:
    raise ValueError(f'unknown distance {kind!r}; valid: {", ".join(DISTANCES)}')
  return d.reshape(d.shape[0])


def _standardize(x: Array) -> Array:
  mu = _mean(x)
  return (x - mu) / jnp.sqrt(_mean(jnp.square(x - mu)) + EPS)


def nss_per_sample(pred: Array, fixation_map: Array) -> Array:
  """NSS per sample: mean of the standardized prediction over fixations (count-weighted)."""
  z = _standardize(pred)
  return (_sum(z * fixation_map) / (EPS + _sum(fixation_map))).reshape(pred.shape[0])


def cc_per_sample(pred: Array, target: Array) -> Array:
  """Pearson correlation per sample, finite for constant maps (then 0)."""
  dp, dt = pred - _mean(pred), target - _mean(target)
  cov = _mean(dp * dt)
  var = _mean(jnp.square(dp)) * _mean(jnp.square(dt))
  return (cov / jnp.sqrt(var + EPS * EPS)).reshape(pred.shape[0])


def _bce_per_sample(pred: Array, target: Array) -> Array:
  p = jnp.clip(pred, EPS, 1.0 - EPS)
  bce = -(target * jnp.log(p) + (1.0 - target) * jnp.log(1.0 - p))
  return _mean(bce).reshape(pred.shape[0])


def _make_distribution_loss(norm: str, dist: str) -> LossFn:
  def loss(pred: Array, target_map: Array, fixation_map: Optional[Array] = None) -> Array:
    del fixation_map
    p, log_p = normalize(pred, norm)
    q, log_q = normalize(target_map, norm)
    return jnp.mean(_distance(dist, p, log_p, q, log_q))
  loss.__doc__ = f'{dist} between {norm}-normalized prediction and target, batch mean.'
  return loss


def _needs_fixations(name: str, fixation_map: Optional[Array]) -> Array:
  if fixation_map is None:
    raise ValueError(f'loss {name!r} needs fixation_map (N, H, W, 1); got None')
  return jnp.asarray(fixation_map, jnp.float32)


def _nss_loss(pred: Array, target_map: Array, fixation_map: Optional[Array] = None) -> Array:
  """-NSS of the prediction against the fixation map."""
  del target_map
  fix = _needs_fixations('nss', fixation_map)
  return -jnp.mean(nss_per_sample(jnp.asarray(pred, jnp.float32), fix))


def _cc_loss(pred: Array, target_map: Array, fixation_map: Optional[Array] = None) -> Array:
  """-CC between prediction and target map."""
  del fixation_map
  return -jnp.mean(cc_per_sample(jnp.asarray(pred, jnp.float32),
                                 jnp.asarray(target_map, jnp.float32)))


def _one_minus_cc_loss(pred: Array, target_map: Array,
                       fixation_map: Optional[Array] = None) -> Array:
  """1 - CC between prediction and target map."""
  return 1.0 + _cc_loss(pred, target_map, fixation_map)


def _bce_loss(pred: Array, target_map: Array, fixation_map: Optional[Array] = None) -> Array:
  """Binary cross-entropy, mean over pixels and batch."""
  del fixation_map
  return jnp.mean(_bce_per_sample(jnp.asarray(pred, jnp.float32),
                                  jnp.asarray(target_map, jnp.float32)))


_REGISTRY: dict[str, LossFn] = {
    f'{n}_{d}': _make_distribution_loss(n, d) for n in NORMALIZATIONS for d in DISTANCES}
_REGISTRY.update(nss=_nss_loss, cc=_cc_loss, one_minus_cc=_one_minus_cc_loss, bce=_bce_loss)
_REGISTRY = dict(sorted(_REGISTRY.items()))
_NEEDS_FIXATIONS = frozenset({'nss'})

LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def available_losses() -> tuple[str, ...]:
  """All single loss names; combine them as e.g. ``"linear_tvd + 0.1 * nss"``."""
  return LOSS_NAMES


_NUMBER = r'(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?'
_TERM = re.compile(
    rf'\s*(?P<sign>[+-])?\s*(?:(?P<pre>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_]\w*)'
    rf'(?:\s*\*\s*(?P<post>{_NUMBER}))?\s*')


def parse_loss(expr: str) -> list[tuple[float, str]]:
  """Parses ``"a * name + b * name2 - ..."`` into ``[(a, name), (b, name2), ...]``."""
  terms, pos = [], 0
  if not isinstance(expr, str) or not expr.strip():
    raise ValueError(f'empty loss name {expr!r}; valid names: {", ".join(LOSS_NAMES)}')
  while pos < len(expr):
    m = _TERM.match(expr, pos)
    if m is None or m.end() == pos or (terms and m.group('sign') is None):
      raise ValueError(f'cannot parse loss expression {expr!r} at position {pos}; expected '
                       f'terms like "0.1 * nss" joined by + or -')
    name = m.group('name')
    if name not in _REGISTRY:
      raise ValueError(f'unknown loss {name!r}; valid names: {", ".join(LOSS_NAMES)}')
    weight = float(m.group('pre') or 1.0) * float(m.group('post') or 1.0)
    terms.append((-weight if m.group('sign') == '-' else weight, name))
    pos = m.end()
  return terms


def needs_fixations(name: str) -> bool:
  """Whether the loss ``name`` (or weighted sum) uses ``fixation_map``."""
  return any(n in _NEEDS_FIXATIONS for _, n in parse_loss(name))


def get_loss(name: str) -> LossFn:
  """Returns the pure loss ``(pred, target_map, fixation_map=None) -> scalar``.

  ``name`` is one of :data:`LOSS_NAMES` or a weighted sum of them, e.g.
  ``"linear_tvd + 0.1 * nss"``. The returned function has an attribute
  ``needs_fixations`` (bool); calling such a loss with ``fixation_map=None`` raises
  ``ValueError``.
  """
  terms = parse_loss(name)
  if len(terms) == 1 and terms[0][0] == 1.0:
    fn = _REGISTRY[terms[0][1]]
  else:
    def fn(pred: Array, target_map: Array, fixation_map: Optional[Array] = None) -> Array:
      return sum(w * _REGISTRY[n](pred, target_map, fixation_map) for w, n in terms)
    fn.__doc__ = f'Weighted loss {name!r}.'

  def loss(pred: Array, target_map: Array, fixation_map: Optional[Array] = None) -> Array:
    return fn(jnp.asarray(pred, jnp.float32), jnp.asarray(target_map, jnp.float32),
              fixation_map)
  loss.__doc__ = fn.__doc__
  loss.__name__ = re.sub(r'\W+', '_', name).strip('_')
  loss.needs_fixations = needs_fixations(name)
  return loss
