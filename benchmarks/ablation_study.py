"""A small ablation study that runs on CPU: the paper's variants on saliency_popout.

Trains each entry of ``STUDY`` (a variant of ``dinet_jax.variants`` and a loss) on the
embedded ``saliency_popout`` data with ``configs/default.py``'s set-up (reduced model,
Adam 1e-3, batch 16, 96x128) for a fixed number of steps per run, once per seed, through
the trainer's library function ``dinet_jax.training.train_and_evaluate``, and writes a
markdown table of the final validation metrics: mean ± sample standard deviation over
the seeds (and min..max of CC)::

    python benchmarks/ablation_study.py --output runs/ablation --steps 250 --seeds 0 1 2 \
        --markdown runs/ablation/table.md

Rerunning with the same ``--output`` skips finished runs (each run's ``summary.json``),
so an interrupted study resumes. Runs are ordered seed by seed, so a partial study has
every entry for the first seeds. A persistent JAX compilation cache (in
``OUTPUT/jax_cache``) lets the seeds of an entry share compiled steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# (entry name, variant of dinet_jax.variants, loss)
STUDY: list[tuple[str, str, str]] = [
    ('baseline', 'baseline', 'linear_tvd'),
    ('dinet', 'dinet', 'linear_tvd'),
    ('dim_1_branch', 'dim_gamma', 'linear_tvd'),
    ('dim_2_branches', 'dim_beta_gamma', 'linear_tvd'),
    ('plain_backbone', 'plain_baseline', 'linear_tvd'),
    ('aspp_s', 'aspp_s', 'linear_tvd'),
    ('dinet_softmax_tvd', 'dinet', 'softmax_tvd'),
    ('dinet_none_tvd', 'dinet', 'none_tvd'),
]
METRICS = ('cc', 'kld', 'sim', 'nss', 'auc_judd', 'loss')
LOWER_IS_BETTER = ('kld', 'loss')


def run_config(variant: str, loss: str, seed: int, steps: int, overrides: dict[str, Any]) -> Any:
  """``configs/default.py`` with the variant's model, the loss, the seed and the budget."""
  from configs import default
  from dinet_jax.variants import variant_config

  config = default.get_config()
  config.model = variant_config(variant, config.model)
  config.loss = loss
  config.seed = seed
  config.max_train_steps = steps
  config.num_summary_images = 0
  config.checkpoint_every_steps = 10**9  # only the end-of-epoch checkpoints
  for key, value in overrides.items():
    config[key] = value
  return config


def run_dir(output: str, entry: str, seed: int) -> str:
  return os.path.join(output, entry, f'seed{seed}')


def _load(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def run_study(output: str, seeds: Sequence[int], steps: int,
              entries: Sequence[tuple[str, str, str]] = tuple(STUDY),
              overrides: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
  """Trains every (entry, seed) not yet done; returns and writes ``results.json``."""
  from dinet_jax import training
  from dinet_jax.variants import count_params

  overrides = dict(overrides or {})
  os.makedirs(output, exist_ok=True)
  results_path = os.path.join(output, 'results.json')
  results = _load(results_path) if os.path.exists(results_path) else {'runs': {}}
  results.update(steps=steps, seeds=list(seeds), overrides=overrides,
                 entries=[list(e) for e in entries])
  study_start = time.perf_counter()
  for seed in seeds:
    for entry, variant, loss in entries:
      key = f'{entry}/seed{seed}'
      workdir = run_dir(output, entry, seed)
      done = results['runs'].get(key)
      if done and done.get('steps') == steps and os.path.exists(
          os.path.join(workdir, 'summary.json')):
        log(f'[study] {key}: done before, skipped')
        continue
      config = run_config(variant, loss, seed, steps, overrides)
      log(f'[study] {key}: variant {variant}, loss {loss}, {steps} steps')
      start = time.perf_counter()
      summary = training.train_and_evaluate(config, workdir)
      seconds = time.perf_counter() - start
      final = summary['history'][-1]
      results['runs'][key] = dict(
          entry=entry, variant=variant, loss=loss, seed=seed, steps=summary['steps'],
          seconds=seconds, final={m: final.get(m) for m in METRICS},
          baseline=summary['baseline'],
          params=count_params(config.model, tuple(config.image_size)))
      results['study_seconds'] = results.get('study_seconds', 0.0) + seconds
      _write_json(results_path, results)
      log(f'[study] {key}: {seconds:.0f} s, ' + ', '.join(
          f'{m} {final[m]:.4f}' for m in METRICS if m in final))
  results['last_invocation_seconds'] = time.perf_counter() - study_start
  _write_json(results_path, results)
  return results


def _write_json(path: str, obj: Any) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def aggregate(results: dict[str, Any]) -> list[dict[str, Any]]:
  """Per entry (in study order): n, params, mean/std/min/max of every metric (``loss``:
  the validation loss), seconds per run; ``loss_name`` is the training loss."""
  rows = []
  for entry, variant, loss in results['entries']:
    runs = [r for r in results['runs'].values() if r['entry'] == entry
            and r['seed'] in results['seeds'] and r['steps'] == results['steps']]
    if not runs:
      continue
    row = dict(entry=entry, variant=variant, loss_name=loss, n=len(runs), params=runs[0]['params'],
               seconds=float(np.mean([r['seconds'] for r in runs])))
    for m in METRICS:
      values = np.asarray([r['final'][m] for r in runs if r['final'].get(m) is not None],
                          np.float64)
      finite = values[np.isfinite(values)]
      if len(values):
        # CC and NSS are undefined (NaN) for a constant map: counted, not averaged.
        row[m] = dict(nonfinite=int(len(values) - len(finite)), **(dict(
            mean=float(finite.mean()),
            std=float(finite.std(ddof=1)) if len(finite) > 1 else float('nan'),
            min=float(finite.min()), max=float(finite.max())) if len(finite) else dict(
                mean=float('nan'), std=float('nan'), min=float('nan'), max=float('nan'))))
    rows.append(row)
  return rows


def centre_bias(results: dict[str, Any]) -> dict[str, float]:
  runs = list(results['runs'].values())
  if not runs:
    return {}
  return {m: float(np.mean([r['baseline'][m] for r in runs])) for m in runs[0]['baseline']}


def _cell(stats: dict[str, float] | None) -> str:
  if stats is None:
    return ''
  if not np.isfinite(stats['mean']):
    return f'undefined ({stats["nonfinite"]}×)'
  text = (f'{stats["mean"]:.3f} ± {stats["std"]:.3f}' if np.isfinite(stats['std'])
          else f'{stats["mean"]:.3f}')
  return text + (f' ({stats["nonfinite"]}× undefined)' if stats['nonfinite'] else '')


def format_markdown(results: dict[str, Any]) -> str:
  rows = aggregate(results)
  metrics = [m for m in METRICS if any(m in r for r in rows)]
  arrows = {m: ' ↓' if m in LOWER_IS_BETTER else ' ↑' for m in metrics}
  head = (['entry', 'variant', 'loss', 'params', 'seeds'] +
          [('val ' if m == 'loss' else '') + m + arrows[m] for m in metrics] +
          ['CC min..max', 's/run'])
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join(['---'] * 3 + ['---:'] * (len(head) - 3)) + '|']
  for r in rows:
    cells = [f'`{r["entry"]}`', f'`{r["variant"]}`', r['loss_name'], f'{r["params"]:,}',
             str(r['n'])]
    for m in metrics:
      cells.append(_cell(r.get(m)))
    cc = r.get('cc')
    cells.append(f'{cc["min"]:.3f}..{cc["max"]:.3f}' if cc and np.isfinite(cc['min']) else '')
    cells.append(f'{r["seconds"]:.0f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  bias = centre_bias(results)
  if bias:
    cells = ['centre bias', '', '', '0', ''] + [
        f'{bias[m]:.3f}' if m in bias else '' for m in metrics] + ['', '']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def enable_compilation_cache(path: str) -> None:
  import jax

  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', os.path.abspath(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--output', required=True, help='study directory (runs, results.json)')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--steps', type=int, default=250, help='training steps per run')
  parser.add_argument('--entries', nargs='*', help=f'subset of: {[e[0] for e in STUDY]}')
  parser.add_argument('--markdown', help='also write the table to this file')
  parser.add_argument('--table_only', action='store_true',
                      help='only print the table of results.json')
  parser.add_argument('--no_cache', action='store_true', help='no compilation cache')
  parser.add_argument('--override', action='append', default=[],
                      help='config override key=python_literal (e.g. batch_size=8)')
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

  results_path = os.path.join(args.output, 'results.json')
  if args.table_only:
    results = _load(results_path)
  else:
    import ast

    overrides = {}
    for item in args.override:
      key, _, value = item.partition('=')
      try:
        overrides[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        overrides[key] = value
    entries = STUDY
    if args.entries:
      unknown = set(args.entries) - {e[0] for e in STUDY}
      if unknown:
        parser.error(f'unknown entries {sorted(unknown)}')
      entries = [e for e in STUDY if e[0] in args.entries]
    if not args.no_cache:
      enable_compilation_cache(os.path.join(args.output, 'jax_cache'))
    results = run_study(args.output, args.seeds, args.steps, entries, overrides)
  table = format_markdown(results)
  print(table)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(table + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
