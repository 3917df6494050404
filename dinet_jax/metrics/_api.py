"""Public saliency metrics: input checks, batching, jit caching and the shared program."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import jax
import jax.numpy as jnp

from dinet_jax.metrics import _maps, _program
from dinet_jax.metrics._program import SALICON_N_RAND, TOPK_NAMES

ArrayLike = Any
Result = Union[float, np.ndarray]

METRIC_NAMES = ('auc_judd', 'auc_borji', 'sauc', 'nss', 'cc', 'kld', 'sim', 'information_gain')
PROTOCOLS = ('mit', 'salicon')
SALICON_SIGMA = 19.0     # blur of the fixation map for SALICON CC
# Pixels per device and compiled call: keeps XLA's temporary buffers below glibc's
# largest mmap threshold (32 MB), so they are reused instead of page-faulted every call.
CHUNK_PIXELS = 700_000
_IN_FLIGHT = 4  # chunks dispatched ahead of the one being computed


_MAP_ARGS = ('saliency_map', 'fixation_map', 'density_map', 'other_fixation_map',
             'baseline_map')


def _slice(x, start: int, stop: int, total: int, size: Optional[int]):
  """Rows start:stop of a batched argument (shared batch-1 arguments pass through),
  zero-padded to ``size`` rows when given (the last chunk of a sharded call)."""
  if x is None or (x.shape[0] == 1 and total > 1) or (start == 0 and stop == total
                                                      and size in (None, total)):
    return x
  x = x[start:stop]
  if size is not None and stop - start < size:
    pad = ((0, size - (stop - start)),) + ((0, 0),) * (x.ndim - 1)
    x = np.pad(x, pad) if isinstance(x, np.ndarray) else jnp.pad(x, pad)
  return x


def _kcap(count: int) -> int:
  """Fixation capacity bucket: a power of two >= count, at least 32 (few compilations)."""
  return max(32, 1 << max(int(count) - 1, 0).bit_length())


def _as_array(x: ArrayLike, arg: str) -> Union[np.ndarray, jax.Array]:
  if isinstance(x, jax.Array):
    return x
  x = np.asarray(x)
  if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
    raise ValueError(f'{arg} must be a numeric array, got dtype {x.dtype}')
  return x


def _batch(x, arg: str, batched: bool, allow_single: bool = False):
  """(H, W) -> (1, H, W); checks the rank."""
  if x.ndim == 2 and (not batched or allow_single):
    return x[None]
  if x.ndim == 3 and batched:
    return x
  want = '(N, H, W)' if batched else '(H, W)'
  raise ValueError(f'{arg} must have shape {want} like the ground truth, got {x.shape}')


def _count_fixations(fix, block: int = 64) -> np.ndarray:
  """Fixated pixels per map, in blocks (no full-size temporary for large batches)."""
  if not isinstance(fix, np.ndarray):
    return np.asarray(jnp.sum(fix.reshape(fix.shape[0], -1) > 0, axis=1))
  flat = fix.reshape(fix.shape[0], -1)
  return np.concatenate([np.count_nonzero(flat[i:i + block] > 0, axis=1)
                         for i in range(0, len(flat), block)])


def _fixation_union_counts(fix, block: int = 64) -> np.ndarray:
  """(1, H, W): how many images of the set fixated each pixel (SALICON shuffle map)."""
  total = np.zeros(fix.shape[1:], np.float32)
  for i in range(0, fix.shape[0], block):
    total += np.sum(np.asarray(fix[i:i + block]) > 0, axis=0)
  return total[None]


def evaluate(names: Sequence[str], saliency_map: ArrayLike, fixation_map: ArrayLike = None,
             density_map: ArrayLike = None, other_fixation_map: ArrayLike = None,
             baseline_map: ArrayLike = None, *, protocol: str = 'mit', jitter: bool = True,
             n_splits: int = 100, step: float = 0.1, seed: int = 0) -> dict[str, Result]:
  """Computes the metrics ``names`` on one map (H, W) or a batch (N, H, W).

  The ground truth (fixation map, else density map) sets the size: the saliency and
  baseline maps are resized to it (bilinear) when their shape differs. Fixation, density
  and other-fixation maps must have the ground truth's shape; other and baseline maps may
  have batch size 1 (or no batch axis) and are then shared by all images. Returns floats
  for (H, W) inputs and (N,) float64 arrays for batches.
  """
  names = tuple(names)
  unknown = [n for n in names if n not in METRIC_NAMES]
  if unknown:
    raise ValueError(f'unknown metrics {unknown}; valid: {", ".join(METRIC_NAMES)}')
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {protocol!r}; valid: {", ".join(PROTOCOLS)}')
  if int(n_splits) < 1 or not 0 < float(step) <= 1:
    raise ValueError(f'need n_splits >= 1 and 0 < step <= 1, got {n_splits}, {step}')
  needs_fix = set(names) - {'kld', 'sim'} - ({'cc'} if protocol == 'mit' else set())
  if needs_fix and fixation_map is None:
    raise ValueError(f'{sorted(needs_fix)} need fixation_map')
  if {'kld', 'sim'} & set(names) or ('cc' in names and protocol == 'mit'):
    if density_map is None:
      raise ValueError('cc, kld and sim need density_map')
  sal = _as_array(saliency_map, 'saliency_map')
  ref_arg = 'fixation_map' if fixation_map is not None else 'density_map'
  ref = _as_array(fixation_map if fixation_map is not None else density_map, ref_arg)
  if ref.ndim not in (2, 3) or min(ref.shape) == 0:
    raise ValueError(f'{ref_arg} must be a non-empty (H, W) or (N, H, W) array, '
                     f'got shape {ref.shape}')
  batched = ref.ndim == 3
  gt_shape = ref.shape[-2:]
  sal = _batch(sal, 'saliency_map', batched)
  if min(sal.shape) == 0:
    raise ValueError(f'saliency_map is empty, shape {sal.shape}')
  arrays = {'saliency_map': sal}
  for arg, x, shared in (('fixation_map', fixation_map, False),
                         ('density_map', density_map, False),
                         ('other_fixation_map', other_fixation_map, True)):
    if x is None:
      continue
    x = _batch(_as_array(x, arg), arg, batched, allow_single=shared)
    if x.shape[-2:] != gt_shape:
      raise ValueError(f'{arg} has shape {x.shape[-2:]}, the ground truth {ref_arg} '
                       f'{gt_shape}; they must match')
    arrays[arg] = x
  if baseline_map is not None:
    arrays['baseline_map'] = _batch(_as_array(baseline_map, 'baseline_map'), 'baseline_map',
                                    batched, allow_single=True)
  total = arrays[ref_arg].shape[0]
  for arg, x in arrays.items():
    if x.shape[0] not in ((1, total) if arg in ('other_fixation_map', 'baseline_map')
                          else (total,)):
      raise ValueError(f'{arg} has {x.shape[0]} maps, the ground truth {total}')
  if 'sauc' in names and 'other_fixation_map' not in arrays and protocol == 'salicon':
    if total > 1:  # SALICON: the fixations of the whole evaluated set
      arrays['other_fixation_map'] = _fixation_union_counts(arrays['fixation_map'])
  ops = None
  if protocol == 'salicon' and 'cc' in names:
    ops = tuple(jnp.asarray(_maps.gaussian_operator(n, SALICON_SIGMA)) for n in gt_shape)

  devices = tuple(jax.local_devices())
  per_call = max(1, min(32, CHUNK_PIXELS // (gt_shape[0] * gt_shape[1])))
  if len(devices) > 1 and total >= per_call * len(devices):
    per_call *= len(devices)  # one call runs a chunk on every device (shard_map)
    run = _program.sharded(devices, tuple(
        arrays.get(k) is not None and arrays[k].shape[0] == total for k in _MAP_ARGS))
  else:
    run = _program.single_device
  pending = []
  for start in range(0, total, per_call):
    stop = min(start + per_call, total)
    chunk = [_slice(arrays.get(k), start, stop, total, per_call if run is not
                    _program.single_device else None) for k in _MAP_ARGS]
    kcap = _kcap(_count_fixations(arrays['fixation_map'][start:stop]).max()
                 if TOPK_NAMES & set(names) else 0)  # per chunk: overlaps the compute
    draws = None
    if 'auc_borji' in names:
      draws = _program.random_pixels(int(seed), (SALICON_N_RAND,) if protocol == 'salicon'
                                     else (kcap, int(n_splits)), gt_shape[0] * gt_shape[1])
    pending.append(run(*chunk, ops, draws, np.uint32(seed), names=names, protocol=protocol,
                       kcap=kcap, jitter=bool(jitter), n_splits=int(n_splits),
                       step=float(step)))
    if len(pending) > _IN_FLIGHT:  # bound the inputs held by queued computations
      jax.block_until_ready(pending[-_IN_FLIGHT - 1])
  pending = jax.device_get(pending)
  for _, flags in pending:
    for (arg, what), bad in sorted(flags.items()):
      if np.any(bad):  # padding rows are zeros: never flagged
        raise ValueError(f'{arg} contains {what}')
  result = {name: np.concatenate([np.asarray(out[name], np.float64) for out, _ in pending]
                                 )[:total] for name in names}
  if 'sauc_fix_hist' in pending[0][0]:
    hists = [np.concatenate([out[k] for out, _ in pending])[:total]
             for k in ('sauc_fix_hist', 'sauc_pop_hist')]
    padded = _kcap(total) - total  # a few batch sizes only: few compilations
    hists = [np.pad(h, ((0, padded), (0, 0))) for h in hists]
    sauc_values = np.asarray(_program.sauc_stage2(*hists, np.uint32(seed),
                                                  n_splits=int(n_splits)), np.float64)
    result['sauc'] = np.where(np.isnan(result['sauc']), np.nan, sauc_values[:total])
  return {k: (v if batched else float(v[0])) for k, v in result.items()}
