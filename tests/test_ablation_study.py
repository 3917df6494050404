"""benchmarks/ablation_study.py: configs of the study entries, aggregation over seeds,
the markdown table, and (slow) a real two-entry, two-seed study on tiny data."""

import json
import os

import numpy as np
import pytest

from benchmarks import ablation_study as study
from dinet_jax import variants


def test_every_entry_is_a_known_variant_and_loss():
  from dinet_jax import losses

  names = [e[0] for e in study.STUDY]
  assert len(set(names)) == len(names)
  for entry, variant, loss in study.STUDY:
    assert variant in variants.VARIANTS
    losses.get_loss(loss)
  required = {'baseline', 'dinet', 'dim_gamma', 'dim_beta_gamma', 'plain_baseline', 'aspp_s'}
  assert required <= {e[1] for e in study.STUDY}
  assert {e[2] for e in study.STUDY if e[1] == 'dinet'} == {'linear_tvd', 'softmax_tvd',
                                                             'none_tvd'}


def test_run_config_applies_variant_loss_seed_and_budget():
  config = study.run_config('aspp_s', 'softmax_tvd', 2, 17, {'batch_size': 8})
  assert config.model.context == 'aspp_s' and config.model.backbone_width == 16
  one = study.run_config('dim_gamma', 'linear_tvd', 0, 5, {})
  assert tuple(one.model.rates) == (8,)  # gamma of configs/default.py's (2, 4, 8)
  assert config.loss == 'softmax_tvd' and config.seed == 2 and config.max_train_steps == 17
  assert config.batch_size == 8
  plain = study.run_config('plain_baseline', 'linear_tvd', 0, 5, {})
  assert plain.model.dilated is False and plain.model.context == 'baseline'


def fake_results():
  runs = {}
  for entry, variant, loss in study.STUDY[:2]:
    for seed, cc in zip((0, 1, 2), (0.5, 0.6, 0.7) if entry == 'dinet' else (0.4, 0.4, 0.4)):
      runs[f'{entry}/seed{seed}'] = dict(
          entry=entry, variant=variant, loss=loss, seed=seed, steps=10, seconds=60.0 + seed,
          params=1000, final=dict(cc=cc, kld=1.0, sim=0.3, nss=1.0, auc_judd=0.8, loss=0.5),
          baseline=dict(cc=0.2, kld=1.5, sim=0.25, nss=0.5, auc_judd=0.7))
  return dict(runs=runs, steps=10, seeds=[0, 1, 2], entries=[list(e) for e in study.STUDY])


def test_aggregate_gives_mean_and_sample_std_over_seeds():
  rows = study.aggregate(fake_results())
  assert [r['entry'] for r in rows] == ['baseline', 'dinet']
  dinet = rows[1]
  assert dinet['n'] == 3 and dinet['seconds'] == pytest.approx(61.0)
  assert dinet['cc']['mean'] == pytest.approx(0.6)
  assert dinet['cc']['std'] == pytest.approx(0.1)  # ddof=1
  assert (dinet['cc']['min'], dinet['cc']['max']) == (0.5, 0.7)
  assert rows[0]['cc']['std'] == pytest.approx(0.0)


def test_undefined_metrics_of_constant_maps_are_counted_not_averaged():
  results = fake_results()
  results['runs']['dinet/seed1']['final']['cc'] = float('nan')
  for seed in (0, 1, 2):
    results['runs'][f'baseline/seed{seed}']['final']['nss'] = float('nan')
  rows = study.aggregate(results)
  assert rows[1]['cc']['mean'] == pytest.approx(0.6) and rows[1]['cc']['nonfinite'] == 1
  assert np.isnan(rows[0]['nss']['mean']) and rows[0]['nss']['nonfinite'] == 3
  text = study.format_markdown(results)
  assert '0.600 ± 0.141 (1× undefined)' in text and 'undefined (3×)' in text


def test_markdown_table():
  text = study.format_markdown(fake_results())
  lines = text.splitlines()
  assert lines[0].startswith('| entry | variant | loss | params | seeds | cc ↑ | kld ↓')
  assert len(lines) == 2 + 2 + 1  # header, rule, two entries, centre bias
  assert '| `dinet` | `dinet` | linear_tvd | 1,000 | 3 | 0.600 ± 0.100 |' in text
  assert '0.500..0.700' in text and lines[-1].startswith('| centre bias')


@pytest.mark.slow
def test_study_runs_resumes_and_writes_the_table(tmp_path):
  """Two entries x two seeds x 2 steps on tiny data through train_and_evaluate."""
  tiny = ['dataset="saliency_popout/tiny"', f'data_dir="{tmp_path / "tfds"}"',
          'image_size=(48, 64)', 'batch_size=8', 'eval_batch_size=8',
          'eval_metrics=("cc", "nss")']
  out = tmp_path / 'study'
  args = ['--output', str(out), '--steps', '2', '--seeds', '0', '1', '--entries',
          'baseline', 'dinet_none_tvd', '--markdown', str(tmp_path / 'table.md')]
  args += [a for o in tiny for a in ('--override', o)]
  assert study.main(args) == 0
  results = json.loads((out / 'results.json').read_text())
  assert sorted(results['runs']) == ['baseline/seed0', 'baseline/seed1',
                                     'dinet_none_tvd/seed0', 'dinet_none_tvd/seed1']
  assert all(r['steps'] == 2 and np.isfinite(r['final']['cc'])
             for r in results['runs'].values())
  assert os.path.exists(out / 'baseline' / 'seed1' / 'summary.json')
  table = (tmp_path / 'table.md').read_text()
  assert '`dinet_none_tvd`' in table and ' ± ' in table
  # A second invocation skips the finished runs.
  before = {k: r['seconds'] for k, r in results['runs'].items()}
  assert study.main(args) == 0
  again = json.loads((out / 'results.json').read_text())
  assert {k: r['seconds'] for k, r in again['runs'].items()} == before
