"""Training end to end on the tiny saliency_popout config: resume, NaN guard, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dinet_jax import checkpoints, losses, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(backbone_width=8, stage_sizes=(1, 1, 1, 1), context_features=8,
                  decoder_features=8, rates=(1, 2, 3))


def tiny_config(data_dir, **overrides):
  config = default.get_config()
  config.dataset = 'saliency_popout/tiny'  # 48x64 images, 64 train / 16 validation
  config.data_dir = str(data_dir)
  config.image_size = (48, 64)
  config.batch_size = 8  # 8 steps per epoch
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.checkpoint_every_steps = 3
  config.log_every_steps = 4
  config.num_summary_images = 2
  config.model.update(TINY_MODEL)
  config.update(overrides)
  return config


def cli_overrides(config):
  return [f'--config.dataset={config.dataset}', f'--config.data_dir={config.data_dir}',
          '--config.image_size=(48,64)', '--config.batch_size=8', '--config.eval_batch_size=8',
          '--config.num_epochs=2', '--config.checkpoint_every_steps=3',
          '--config.log_every_steps=4', '--config.num_summary_images=2'] + [
              f'--config.model.{k}={v}'.replace(' ', '') for k, v in TINY_MODEL.items()]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory):
  """An uninterrupted two-epoch run: (workdir, summary, variables of the last step)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  summary = training.train_and_evaluate(tiny_config(data_dir), workdir)
  variables, meta = checkpoints.load_checkpoint(workdir, 'latest')
  return workdir, summary, variables, meta


def assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_reference_run_writes_everything(reference_run):
  workdir, summary, variables, meta = reference_run
  assert meta['step'] == 16 and meta['epochs_done'] == 2
  assert len(summary['history']) == 2
  for key in ('loss', 'cc', 'kld', 'sim', 'nss', 'auc_judd'):
    assert np.isfinite(summary['history'][-1][key])
  assert set(summary['baseline']) >= {'cc', 'nss', 'auc_judd'}
  with open(os.path.join(workdir, 'versions.json')) as f:
    assert json.load(f)['jax'] == jax.__version__
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['loss'] == 'linear_tvd'
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  best, best_meta = checkpoints.load_checkpoint(workdir, 'best')
  assert best_meta['progress']['best_val_loss'] == min(h['loss'] for h in summary['history'])
  assert best_meta['model']['backbone_width'] == 8


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(data_dir, tmp_path,
                                                                   reference_run):
  workdir = str(tmp_path / 'resumed')
  training.train_and_evaluate(tiny_config(data_dir, max_train_steps=5), workdir)
  assert checkpoints.load_checkpoint(workdir, 'latest')[1]['step'] == 5
  training.train_and_evaluate(tiny_config(data_dir), workdir)  # same command, resumes
  variables, meta = checkpoints.load_checkpoint(workdir, 'latest')
  assert meta['step'] == 16
  assert_same_params(variables['params'], reference_run[2]['params'])


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'nan')
  training.train_and_evaluate(tiny_config(data_dir, max_train_steps=3), workdir)
  good, _ = checkpoints.load_checkpoint(workdir, 'latest')
  real = losses.get_loss

  def nan_loss(name):
    fn = lambda p, t, f=None: real(name)(p, t, f) * jnp.nan
    fn.needs_fixations = False
    return fn

  monkeypatch.setattr(losses, 'get_loss', nan_loss)
  with pytest.raises(FloatingPointError, match=r'Non-finite training loss \(nan\) at step 4'):
    training.train_and_evaluate(tiny_config(data_dir), workdir)
  after, meta = checkpoints.load_checkpoint(workdir, 'latest')
  assert meta['step'] == 3
  assert_same_params(after['params'], good['params'])


def test_workdir_with_a_different_config_is_refused(data_dir, reference_run):
  workdir = reference_run[0]
  with pytest.raises(ValueError) as info:
    training.train_and_evaluate(tiny_config(data_dir, loss='softmax_tvd'), workdir)
  msg = str(info.value)
  assert "loss: 'linear_tvd' in the workdir, 'softmax_tvd' now" in msg
  assert 'delete' in msg and workdir in msg


def test_clear_errors_for_weights_dataset_and_batch_size(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere/resnet50.*python -m dinet_jax.convert'):
    training.train_and_evaluate(
        tiny_config(data_dir, backbone_weights=str(tmp_path / 'nowhere/resnet50')),
        str(tmp_path / 'w1'))
  with pytest.raises(FileNotFoundError, match='salicon/2015 is not prepared.*tfds build'):
    training.train_and_evaluate(tiny_config(tmp_path / 'empty', dataset='salicon/2015'),
                                str(tmp_path / 'w2'))
  with pytest.raises(ValueError, match='batch_size=6 is not divisible by the 4 devices'):
    training.train_and_evaluate(tiny_config(data_dir, batch_size=6), str(tmp_path / 'w3'))


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(data_dir, tmp_path, reference_run):
  """The real command, killed with SIGKILL after its first checkpoint, then rerun, ends
  where the same command run without interruption ends (both as subprocesses, so that
  both compile identically)."""
  def command(workdir):
    return [sys.executable, os.path.join(REPO, 'train.py'), f'--workdir={workdir}'] + \
        cli_overrides(tiny_config(data_dir))

  whole = str(tmp_path / 'whole')
  done = subprocess.run(command(whole), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = str(tmp_path / 'killed')
  proc = subprocess.Popen(command(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoints.load_checkpoint(workdir, 'latest')[1]['step']
  assert 3 <= killed_at < 16
  done = subprocess.run(command(workdir), cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'Resuming {workdir} from step {killed_at}' in done.stdout
  variables, meta = checkpoints.load_checkpoint(workdir, 'latest')
  assert meta['step'] == 16
  assert_same_params(variables['params'], checkpoints.load_checkpoint(whole, 'latest')[0]['params'])


@pytest.mark.slow
def test_two_process_run_on_localhost(data_dir, tmp_path, reference_run):
  """jax.distributed over two local processes with two CPU devices each."""
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / 'two_process')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  cmd = [sys.executable, os.path.join(REPO, 'train.py'), f'--workdir={workdir}',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2'] + \
      cli_overrides(tiny_config(data_dir)) + ['--config.num_epochs=1']
  procs = [subprocess.Popen(cmd + [f'--process_id={i}'], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 0)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'epoch  1/1 step 8' in outs[1][0]  # process 0 logs: 64 examples / (2 x 4) per step
  assert 'epoch' not in outs[0][0]  # process 1 does not
  variables, meta = checkpoints.load_checkpoint(workdir, 'latest')
  assert meta['step'] == 8
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
