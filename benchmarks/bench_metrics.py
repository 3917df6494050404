"""Times the eight saliency metrics on N maps of 480x640, in JAX and in a plain numpy loop.

    python benchmarks/bench_metrics.py [--n 5000] [--devices 2] [--numpy-n 10]

The maps are synthetic but realistic: smooth saliency maps (sums of Gaussians plus a
little noise, float32), fixation maps with 50-300 fixations (uint8 counts), density
maps (the fixations blurred), per-image "other" maps (union of 10 other images'
fixations, uint8) and one shared centre-bias baseline. A pool of --pool distinct images
is scored repeatedly until N maps are done (the cost does not depend on the content);
compilation is timed separately. The numpy loop (obvious per-image translations of the
MIT definitions) runs on --numpy-n maps and is extrapolated to N.

--devices sets XLA_FLAGS=--xla_force_host_platform_device_count before jax is imported,
so that the metric chunks run on that many CPU devices (one per core) concurrently.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

H, W = 480, 640


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--n', type=int, default=5000, help='number of maps to score')
  p.add_argument('--pool', type=int, default=128, help='distinct synthetic images')
  p.add_argument('--devices', type=int, default=os.cpu_count() or 1,
                 help='CPU devices for JAX (default: number of cores)')
  p.add_argument('--numpy-n', type=int, default=10, help='maps for the numpy loop (0: skip)')
  p.add_argument('--protocol', default='mit', choices=('mit', 'salicon'))
  p.add_argument('--breakdown', action='store_true', help='also time each metric alone')
  return p.parse_args()


def _gauss(centres: np.ndarray, n: int, sigma: float) -> np.ndarray:
  return np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / sigma) ** 2)


def make_pool(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Synthetic saliency/fixation/density/other maps of n images and a baseline."""
  rng = np.random.default_rng(seed)
  sal = np.empty((n, H, W), np.float32)
  den = np.empty((n, H, W), np.float32)
  fix = np.zeros((n, H, W), np.uint8)
  for i in range(n):
    k = rng.integers(50, 301)
    cy = np.clip(rng.normal(H / 2, H / 5, 8), 0, H - 1)
    cx = np.clip(rng.normal(W / 2, W / 5, 8), 0, W - 1)
    pick = rng.integers(0, 8, k)
    fy = np.clip((cy[pick] + rng.normal(0, 30, k)).astype(int), 0, H - 1)
    fx = np.clip((cx[pick] + rng.normal(0, 30, k)).astype(int), 0, W - 1)
    np.add.at(fix[i], (fy, fx), 1)
    d = _gauss(fy, H, 25.0) @ _gauss(fx, W, 25.0).T
    den[i] = d / d.max()
    s = _gauss(cy + rng.normal(0, 20, 8), H, 40.0) @ _gauss(cx + rng.normal(0, 20, 8), W, 40.0).T
    sal[i] = s / s.max() + 0.01 * rng.random((H, W))
  other = np.zeros((n, H, W), np.uint8)
  for i in range(n):
    for j in rng.choice([j for j in range(n) if j != i], min(10, n - 1), replace=False):
      other[i] |= fix[j] > 0
  base = (_gauss(np.array([H / 2]), H, H / 4) @ _gauss(np.array([W / 2]), W, W / 4).T)
  return dict(saliency_map=sal, fixation_map=fix, density_map=den, other_fixation_map=other,
              baseline_map=base.astype(np.float32))


# ---- plain numpy loop: obvious per-image versions of the MIT definitions ----

def _np_minmax(x):
  return (x - x.min()) / (x.max() - x.min())


def _np_auc_judd(s, f):
  s = s.ravel().astype(np.float64)
  fix = f.ravel() > 0
  thr = np.sort(s[fix])[::-1]
  nf, n = thr.size, s.size
  tp = np.concatenate([[0], np.arange(1, nf + 1) / nf, [1]])
  fp = np.concatenate([[0], [(np.sum(s >= t) - i) / (n - nf) for i, t in enumerate(thr, 1)], [1]])
  return np.trapezoid(tp, fp)


def _np_split_auc(sth, negatives, step):
  aucs = []
  for neg in negatives:
    thr = np.arange(0, max(sth.max(), neg.max()) + step / 1e6, step)[::-1]
    tp = np.concatenate([[0], [(sth >= t).mean() for t in thr], [1]])
    fp = np.concatenate([[0], [(neg >= t).mean() for t in thr], [1]])
    aucs.append(np.trapezoid(tp, fp))
  return float(np.mean(aucs))


def _np_metrics(rng, s, f, d, o, b, n_splits=100, step=0.1):
  s64, d64 = s.astype(np.float64), d.astype(np.float64)
  sn = _np_minmax(s64).ravel()
  fix = f.ravel() > 0
  sth = sn[fix]
  out = {'auc_judd': _np_auc_judd(s64, f)}
  out['auc_borji'] = _np_split_auc(sth, [sn[rng.integers(0, sn.size, sth.size)]
                                         for _ in range(n_splits)], step)
  cand = np.flatnonzero(o.ravel() > 0)
  m = min(sth.size, cand.size)
  out['sauc'] = _np_split_auc(sth, [sn[rng.permutation(cand)[:m]] for _ in range(n_splits)],
                              step)
  z = (s64 - s64.mean()) / s64.std(ddof=1)
  out['nss'] = z.ravel()[fix].mean()
  out['cc'] = np.corrcoef(s64.ravel(), d64.ravel())[0, 1]
  p, q = s64 / s64.sum(), d64 / d64.sum()
  eps = 2.2204e-16
  out['kld'] = np.sum(q * np.log(eps + q / (p + eps)))
  pn, qn = _np_minmax(s64), _np_minmax(d64)
  out['sim'] = np.minimum(pn / pn.sum(), qn / qn.sum()).sum()
  bn = _np_minmax(b.astype(np.float64))
  out['information_gain'] = np.mean(np.log2(eps + (pn / pn.sum()).ravel()[fix])
                                    - np.log2(eps + (bn / bn.sum()).ravel()[fix]))
  return out


def main() -> None:
  args = _parse()
  if args.devices > 1:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={args.devices}')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  from dinet_jax import metrics

  t0 = time.perf_counter()
  pool = make_pool(args.pool)
  nfix = np.count_nonzero(pool['fixation_map'].reshape(args.pool, -1), axis=1)
  print(f'pool of {args.pool} synthetic {H}x{W} images in {time.perf_counter() - t0:.1f} s; '
        f'fixated pixels per image {nfix.min()}-{nfix.max()}; '
        f'jax {jax.__version__}, {len(jax.devices())} {jax.default_backend()} device(s), '
        f'{os.cpu_count()} cores')
  kwargs = dict(pool, protocol=args.protocol)

  t0, c0 = time.perf_counter(), time.process_time()
  metrics.compute_all(**kwargs)
  print(f'first call (compilation + {args.pool} maps): {time.perf_counter() - t0:.1f} s '
        f'(process CPU {time.process_time() - c0:.1f} s); load average before the timed '
        f'run: {os.getloadavg()[0]:.1f}')

  done, elapsed, cpu0 = 0, 0.0, time.process_time()
  results = []
  while done < args.n:
    count = min(args.pool, args.n - done)
    batch = {k: (v[:count] if v.ndim == 3 else v) for k, v in kwargs.items()
             if k != 'protocol'}
    t0 = time.perf_counter()
    results.append(metrics.compute_all(**batch, protocol=args.protocol))
    elapsed += time.perf_counter() - t0
    done += count
  cpu = time.process_time() - cpu0
  means = {k: float(np.nanmean(np.concatenate([r[k] for r in results]))) for k in results[0]}
  print(f'JAX compute_all, all 8 metrics ({args.protocol}), {done} maps: {elapsed:.1f} s '
        f'({1e3 * elapsed / done:.2f} ms/map, {done / elapsed:.0f} maps/s; process CPU '
        f'{cpu:.1f} s = {1e3 * cpu / done:.2f} ms/map; load average after '
        f'{os.getloadavg()[0]:.1f})')
  print('  means: ' + ', '.join(f'{k} {v:.4f}' for k, v in means.items()))

  if args.breakdown:
    count = min(args.pool, 64)
    batch = {k: (v[:count] if v.ndim == 3 else v) for k, v in pool.items()}
    for name in metrics.METRIC_NAMES:
      metrics.evaluate((name,), **batch, protocol=args.protocol)
      t0 = time.perf_counter()
      metrics.evaluate((name,), **batch, protocol=args.protocol)
      print(f'  {name} alone: {1e3 * (time.perf_counter() - t0) / count:.2f} ms/map')

  if args.numpy_n > 0 and args.protocol == 'mit':
    rng = np.random.default_rng(0)
    k = min(args.numpy_n, args.pool)
    t0 = time.perf_counter()
    for i in range(k):
      _np_metrics(rng, *(pool[a][i] for a in ('saliency_map', 'fixation_map', 'density_map',
                                              'other_fixation_map')), pool['baseline_map'])
    per = (time.perf_counter() - t0) / k
    print(f'numpy loop, all 8 metrics: {1e3 * per:.0f} ms/map on {k} maps, extrapolated to '
          f'{done} maps: {per * done:.0f} s ({per * done / elapsed:.0f}x the JAX time)')


if __name__ == '__main__':
  main()
