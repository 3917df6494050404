"""``train_and_evaluate(config, workdir)``: the training loop behind ``train.py``.

Resumable: rerunning on the same workdir restores the latest checkpoint and continues
the same data order (a pure function of seed and epoch) and learning-rate schedule (a
function of the step). Only process 0 writes logs, summaries and the config.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dinet_jax import checkpoints as ckpt_lib
from dinet_jax import evaluation, input_pipeline, losses, optim, parallel, run_info, steps
from dinet_jax import datasets
from dinet_jax.models import create_model


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def initial_variables(model: Any, config: ml_collections.ConfigDict,
                      rng: jax.Array) -> dict[str, Any]:
  """Random initialisation, then converted backbone weights and/or a run to fine-tune."""
  h, w = config.image_size
  variables = jax.jit(model.init)(rng, jnp.zeros((1, h, w, 3), jnp.float32))
  variables = jax.device_get(variables)
  if config.backbone_weights:
    variables = load_backbone_weights(variables, config.backbone_weights)
  if config.init_from:
    loaded, meta = ckpt_lib.load_checkpoint(config.init_from, 'best')
    variables = _replace_matching(variables, loaded, f'init_from={config.init_from!r}')
    _log(f'Initialised from {config.init_from} (step {meta.get("step")}).')
  return variables


def load_backbone_weights(variables: dict[str, Any], path: str) -> dict[str, Any]:
  """Puts converted ResNet-50 weights (an orbax dir, or a torchvision .pth converted on the
  fly) into ``variables['params'|'batch_stats']['backbone']``."""
  from dinet_jax import convert

  if os.path.isfile(path):
    backbone = convert.torchvision_resnet50_to_flax(path)
  elif os.path.isdir(path):
    backbone = convert.load_variables(path)
  else:
    raise FileNotFoundError(
        f'config.backbone_weights={path!r} does not exist. Download torchvision\'s ResNet-50 '
        f'checkpoint and convert it: python -m dinet_jax.convert --torchvision '
        f'resnet50-0676ba61.pth --output {path} (see README.md).')
  wrapped = {c: {'backbone': backbone[c]} for c in ('params', 'batch_stats')}
  return _replace_matching(variables, wrapped, f'backbone_weights={path!r}')


def _replace_matching(variables: dict[str, Any], new: dict[str, Any],
                      source: str) -> dict[str, Any]:
  """Overwrites the leaves of ``variables`` present in ``new``; shapes must agree."""
  from flax import traverse_util

  flat = traverse_util.flatten_dict(variables)
  bad = []
  for path, value in traverse_util.flatten_dict(new).items():
    if path not in flat:
      bad.append(f'{"/".join(path)}: not in the model')
    elif tuple(np.shape(value)) != tuple(flat[path].shape):
      bad.append(f'{"/".join(path)}: {tuple(np.shape(value))} vs model '
                 f'{tuple(flat[path].shape)}')
    else:
      flat[path] = np.asarray(value, dtype=flat[path].dtype)
  if bad:
    raise ValueError(f'{source} does not fit the configured model (config.model):\n  ' +
                     '\n  '.join(bad[:20]) + ('\n  ...' if len(bad) > 20 else ''))
  return traverse_util.unflatten_dict(flat)


class _Progress:
  """A tqdm bar per epoch on process 0 (plain log lines when stdout is not a terminal)."""

  def __init__(self, total: int, initial: int, epoch: int, num_epochs: int):
    self.bar = None
    if jax.process_index() == 0:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=f'epoch {epoch + 1}/{num_epochs}',
                      unit='step', dynamic_ncols=True, file=sys.stdout,
                      mininterval=1.0 if sys.stdout.isatty() else 30.0)

  def update(self, n: int, **postfix: Any) -> None:
    if self.bar is not None:
      self.bar.set_postfix(postfix, refresh=False)
      self.bar.update(n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if it holds a run) and returns the final
  summary: the best validation metrics, the centre-bias baseline's, and run figures."""
  workdir = os.path.abspath(workdir)
  run_info.prepare_workdir(config, workdir)

  loss_fn = losses.get_loss(config.loss)
  # The gradient norm is only computed for the steps that log it (steps.train_step).
  par = parallel.Parallel(config.parallelism, loss_fn, update_stats=config.model.train_bn,
                          grad_norm_every=config.log_every_steps)
  par.check_batch_size(config.batch_size, 'batch_size')
  par.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  per_process_batch = config.batch_size // jax.process_count()

  if jax.process_index() == 0:  # generated datasets are built once, by process 0
    datasets.ensure_prepared(config.dataset, data_dir=config.data_dir,
                             manual_dir=config.manual_dir)
  parallel.sync_processes('dataset_prepared')
  datasets.ensure_prepared(config.dataset, data_dir=config.data_dir,
                           manual_dir=config.manual_dir)
  steps_per_epoch = input_pipeline.num_train_batches(
      config.dataset, config.train_split, data_dir=config.data_dir,
      batch_size=per_process_batch, process_count=jax.process_count())
  if steps_per_epoch == 0:
    raise ValueError(f'{config.dataset}/{config.train_split} has fewer examples than one '
                     f'batch of {config.batch_size}.')

  model = create_model(config.model)
  rng = jax.random.PRNGKey(config.seed)
  variables = initial_variables(model, config, rng)
  tx, schedule = optim.create_optimizer(config, steps_per_epoch)
  state = steps.create_train_state(model, variables, tx)
  del variables

  ckpts = ckpt_lib.RunCheckpoints(workdir)
  progress = {'best_val_loss': math.inf, 'best_epoch': -1, 'bad_epochs': 0, 'history': []}
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, meta = restored
    progress.update(meta.get('progress', {}))
    _log(f'Resuming {workdir} from step {int(state.step)}.')
  step = int(state.step)
  state = par.put_state(state)

  writer = run_info.summary_writer(workdir)
  evaluator = evaluation.Evaluator(config, par, metric_names=tuple(config.eval_metrics))
  baseline = evaluator.baseline()
  max_steps = config.max_train_steps if config.max_train_steps > 0 else math.inf
  model_meta = {'model': config.model.to_dict(), 'image_size': list(config.image_size),
                'dataset': config.dataset, 'loss': config.loss}

  def meta(epoch_done: int) -> dict[str, Any]:
    return {**model_meta, 'epochs_done': epoch_done, 'steps_per_epoch': steps_per_epoch,
            'progress': progress}

  start_epoch = step // steps_per_epoch
  stopped_early = False
  for epoch in range(start_epoch, config.num_epochs):
    if step >= max_steps or stopped_early:
      break
    start_batch = step - epoch * steps_per_epoch
    batches = input_pipeline.create_train_iterator(
        config.dataset, config.train_split, data_dir=config.data_dir,
        image_size=tuple(config.image_size), batch_size=per_process_batch, seed=config.seed,
        epoch=epoch, flip=config.flip, start_batch=start_batch,
        process_index=jax.process_index(), process_count=jax.process_count(),
        with_fixation_maps=loss_fn.needs_fixations)
    bar = _Progress(steps_per_epoch, start_batch, epoch, config.num_epochs)
    pending, t0, seen = None, time.perf_counter(), 0
    for batch in batches:
      state, metrics = par.train_step(state, batch)
      step += 1
      # Read the previous step's loss while this one runs (keeps dispatch asynchronous).
      if pending is not None:
        _check_finite(pending, step - 1, epoch)
      pending = metrics
      seen += config.batch_size
      if step % config.log_every_steps == 0 or step % steps_per_epoch == 0:
        host = jax.device_get(pending)
        _check_finite(host, step, epoch)
        pending = None
        rate = seen / (time.perf_counter() - t0)
        lr = float(schedule(step - 1))
        bar.update(0, loss=f'{float(host["loss"]):.4f}', lr=f'{lr:.1e}', img_s=f'{rate:.1f}')
        writer.scalar('train/loss', float(host['loss']), step)
        if np.isfinite(host['grad_norm']):  # NaN at epoch ends between logging steps
          writer.scalar('train/grad_norm', float(host['grad_norm']), step)
        writer.scalar('train/learning_rate', lr, step)
        writer.scalar('train/images_per_second', rate, step)
      bar.update(1)
      if step % config.checkpoint_every_steps == 0 and step % steps_per_epoch:
        if pending is not None:
          _check_finite(jax.device_get(pending), step, epoch)
          pending = None
        ckpts.save(par.get_state(state), meta(epoch))
      if step >= max_steps:
        break
    bar.close()
    if pending is not None:
      _check_finite(jax.device_get(pending), step, epoch)
    epoch_done = step % steps_per_epoch == 0  # else stopped by max_train_steps
    results = evaluator.evaluate(state, config.eval_split, num_images=config.num_summary_images)
    val = results['means']
    improved = val['loss'] < progress['best_val_loss']
    if improved:
      progress.update(best_val_loss=val['loss'], best_epoch=epoch, bad_epochs=0,
                      best_metrics=val)
    elif epoch_done:
      progress['bad_epochs'] += 1
    progress['history'].append({'epoch': epoch + 1, 'step': step, **val})
    host_state = par.get_state(state)
    done = epoch + 1 if epoch_done else epoch
    if improved:
      ckpts.save(host_state, meta(done), best=True)
    ckpts.save(host_state, meta(done))
    evaluation.write_summaries(writer, val, results.get('images'), step, baseline)
    _log(f'epoch {epoch + 1:>2}/{config.num_epochs} step {step}  ' +
         evaluation.format_side_by_side(val, baseline) + ('  *best*' if improved else ''))
    if progress['bad_epochs'] >= config.early_stopping_patience:
      _log(f'Early stopping: no better validation loss for {progress["bad_epochs"]} epochs.')
      stopped_early = True
  writer.flush()
  ckpts.close()
  summary = {'best_epoch': progress['best_epoch'] + 1, 'steps': step,
             'best': progress.get('best_metrics', {}), 'baseline': baseline,
             'history': progress['history']}
  if jax.process_index() == 0:
    ckpt_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def _check_finite(metrics: Any, step: int, epoch: int) -> None:
  loss = float(np.asarray(jax.device_get(metrics['loss'])))
  if not np.isfinite(loss):
    raise FloatingPointError(
        f'Non-finite training loss ({loss}) at step {step} (epoch {epoch + 1}). Training '
        f'stopped; no checkpoint was written after the last finite one. Try a lower '
        f'config.learning_rate or check the input data.')
