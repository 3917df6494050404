"""Converts PyTorch checkpoints into Flax variables: torchvision ResNet-50 for ``ResNet50``,
and whole PyTorch DINet ports (backbone, DIM, decoder) for ``DINet``.

    python -m dinet_jax.convert --torchvision resnet50-0676ba61.pth --output data/resnet50_v1
    python -m dinet_jax.convert --dinet dinet_port.pth --output data/dinet_from_torch

write an orbax checkpoint of ``{'params': ..., 'batch_stats': ...}`` (training reads the
first through ``config.backbone_weights``). Conv kernels go from torch's OIHW to HWIO,
BatchNorm ``weight/bias/running_mean/running_var`` to ``scale/bias/mean/var``;
``num_batches_tracked`` is dropped. A DINet state_dict is expected in the layout of
``benchmarks/torch_reference.py`` (``backbone.*`` a torchvision ResNet-50,
``context.reduce/branch{i}``, ``decoder.conv{i}/out``); other ports' names are mapped with
``rename`` (``--rename OLD=NEW``, prefixes).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Mapping

import numpy as np

WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'network')
BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
_IGNORED_SUFFIX = '.num_batches_tracked'


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch checkpoint (``weights_only=True``) into a flat dict of numpy arrays.

  Accepts a plain state_dict, one wrapped under a key such as ``'state_dict'`` or
  ``'model'``, and keys with a ``module.`` prefix (DataParallel).
  """
  import torch  # The 'convert' extra; not needed for training.

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No checkpoint file at {path!r}.')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
    raise ValueError(
        f'{path!r} is not a readable PyTorch checkpoint (torch.load with '
        f'weights_only=True failed: {type(e).__name__}: {str(e).splitlines()[0][:200]})'
    ) from None
  return _flatten_state_dict(obj, path)


def _flatten_state_dict(obj: Any, source: str) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping):
    for key in WRAPPER_KEYS:
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{source!r} holds a {type(obj).__name__}, not a state_dict of tensors.')
  out = {}
  for key, value in obj.items():
    if not hasattr(value, 'shape'):
      raise ValueError(f'{source!r}: entry {key!r} is a {type(value).__name__}, not a tensor.')
    key = re.sub(r'^(module\.)+', '', str(key))
    if hasattr(value, 'detach'):
      value = value.detach().cpu().float().numpy() if value.is_floating_point() else \
          value.detach().cpu().numpy()
    out[key] = np.asarray(value)
  return out


def _torch_module_name(flax_path: tuple[str, ...]) -> str:
  """('layer3_0', 'downsample_bn') -> 'layer3.0.downsample.1'."""
  parts = []
  for name in flax_path:
    m = re.fullmatch(r'(layer\d+)_(\d+)', name)
    if m:
      parts += [m.group(1), m.group(2)]
    elif name == 'downsample_conv':
      parts += ['downsample', '0']
    elif name == 'downsample_bn':
      parts += ['downsample', '1']
    else:
      parts.append(name)
  return '.'.join(parts)


def _convert_leaf(collection: str, path: tuple[str, ...], torch_sd: Mapping[str, np.ndarray],
                  prefix: str) -> tuple[str, np.ndarray | None]:
  module, leaf = path[:-1], path[-1]
  base = prefix + _torch_module_name(module)
  if leaf == 'kernel':
    key = base + '.weight'
    w = torch_sd.get(key)
    if w is None:
      return key, None
    return key, (np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w.T)
  if collection == 'batch_stats' or leaf == 'scale' or (leaf == 'bias' and 'bn' in module[-1]):
    key = f'{base}.{BN_NAMES[leaf]}'
  else:
    key = f'{base}.{leaf}'
  return key, torch_sd.get(key)


def convert_state_dict(torch_sd: Mapping[str, np.ndarray], target: Mapping[str, Any], *,
                       prefix: str = '', ignore_prefixes: tuple[str, ...] = (),
                       source: str = 'state_dict') -> dict[str, Any]:
  """Fills the variable tree ``target`` (shapes, e.g. from ``jax.eval_shape``) from a torch
  state_dict whose module names mirror the Flax names. Raises ``ValueError`` listing every
  missing, unexpected and wrongly shaped key."""
  import flax

  used, missing, bad_shape = set(), [], []
  out = {}
  for collection, tree in target.items():
    flat = flax.traverse_util.flatten_dict(tree)
    converted = {}
    for path, shaped in flat.items():
      key, value = _convert_leaf(collection, path, torch_sd, prefix)
      if value is None:
        missing.append(key)
        continue
      used.add(key)
      if tuple(value.shape) != tuple(shaped.shape):
        bad_shape.append(f'{key}: checkpoint {tuple(torch_sd[key].shape)} -> '
                         f'{tuple(value.shape)}, model expects {tuple(shaped.shape)}')
        continue
      converted[path] = np.asarray(value, dtype=np.float32)
    out[collection] = flax.traverse_util.unflatten_dict(converted)
  unexpected = sorted(
      k for k in torch_sd if k not in used and not k.endswith(_IGNORED_SUFFIX)
      and not any(k.startswith(p) for p in ignore_prefixes))
  problems = []
  if missing:
    problems.append(f'missing keys ({len(missing)}): {", ".join(sorted(missing))}')
  if unexpected:
    problems.append(f'unexpected keys ({len(unexpected)}): {", ".join(unexpected)}')
  if bad_shape:
    problems.append(f'wrongly shaped keys ({len(bad_shape)}): {"; ".join(bad_shape)}')
  if problems:
    raise ValueError(f'{source} does not match the model:\n  ' + '\n  '.join(problems))
  return out


def torchvision_resnet50_to_flax(state_dict_or_path: Any, *,
                                 include_head: bool = False) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` for ``ResNet50`` from a torchvision ResNet-50 checkpoint.

  ``state_dict_or_path``: a path, or a mapping of names to torch tensors or arrays. The
  classifier (``fc.*``) is dropped unless ``include_head`` (then the variables are for
  ``ResNet50(num_classes=1000)``). Dilation has no weights, so the result serves both
  ``dilated=True`` and ``dilated=False``.
  """
  import jax
  import jax.numpy as jnp

  from dinet_jax.models import ResNet50

  if isinstance(state_dict_or_path, (str, os.PathLike)):
    source = repr(os.fspath(state_dict_or_path))
    sd = load_torch_state_dict(state_dict_or_path)
  else:
    source = 'the state_dict'
    sd = _flatten_state_dict(state_dict_or_path, source)
  num_classes = None
  if include_head:
    if 'fc.weight' not in sd:
      raise ValueError(f'{source} has no classifier (fc.weight) but include_head=True.')
    num_classes = sd['fc.weight'].shape[0]
  model = ResNet50(num_classes=num_classes)
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return convert_state_dict(sd, target, ignore_prefixes=() if include_head else ('fc.',),
                            source=source)


def _read_state_dict(state_dict_or_path: Any) -> tuple[dict[str, np.ndarray], str]:
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    return (load_torch_state_dict(state_dict_or_path),
            repr(os.fspath(state_dict_or_path)))
  return _flatten_state_dict(state_dict_or_path, 'the state_dict'), 'the state_dict'


def rename_keys(state_dict: Mapping[str, Any],
                rename: Mapping[str, str]) -> dict[str, Any]:
  """Replaces key prefixes: ``rename={'encoder.': 'backbone.', 'dim.': 'context.'}``.
  The longest matching prefix wins; keys that match none are kept."""
  prefixes = sorted(rename, key=len, reverse=True)
  out = {}
  for key, value in state_dict.items():
    for p in prefixes:
      if key.startswith(p):
        key = rename[p] + key[len(p):]
        break
    if key in out:
      raise ValueError(f'rename maps two checkpoint entries to {key!r}.')
    out[key] = value
  return out


def torch_dinet_to_flax(state_dict_or_path: Any, model: Any = None, *,
                        rename: Mapping[str, str] | None = None) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` for a Flax ``DINet`` from a PyTorch DINet checkpoint.

  ``state_dict_or_path``: a path, or a mapping of names to torch tensors or arrays, in
  the layout of ``benchmarks/torch_reference.py``'s ``TorchDINet``: ``backbone.*`` (a
  torchvision ResNet-50; a classifier ``backbone.fc.*`` is ignored),
  ``context.reduce.weight``, ``context.branch{i}.weight``, ``decoder.conv{i}.weight``,
  ``decoder.out.weight``. ``model``: the Flax model the variables are for (default
  ``DINet()``; e.g. ``create_model({'context': 'baseline'})`` for the baseline).
  ``rename``: key prefixes to replace first, for ports with other module names.
  Raises ``ValueError`` listing every missing, unexpected and wrongly shaped key.
  """
  import jax
  import jax.numpy as jnp

  from dinet_jax.models import DINet

  sd, source = _read_state_dict(state_dict_or_path)
  if rename:
    sd = rename_keys(sd, rename)
  model = DINet() if model is None else model
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return convert_state_dict(sd, target, ignore_prefixes=('backbone.fc.',), source=source)


def save_variables(variables: Mapping[str, Any], directory: str | os.PathLike, *,
                   overwrite: bool = False) -> str:
  """Saves a variable tree with orbax (atomically: written to a temporary name first)."""
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f'{directory!r} exists; pass --overwrite to replace it.')
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, dict(variables), force=overwrite)
  checkpointer.wait_until_finished()
  return directory


def load_variables(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads variables saved by ``save_variables`` (numpy arrays)."""
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No converted weights at {directory!r}. Convert a torchvision checkpoint with '
        f'`python -m dinet_jax.convert --torchvision PATH.pth --output {directory}`.')
  return ocp.StandardCheckpointer().restore(directory)


def main(argv: list[str] | None = None) -> int:
  import argparse

  parser = argparse.ArgumentParser(
      prog='python -m dinet_jax.convert', description=__doc__.split('\n\n')[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--torchvision', metavar='PATH.pth',
                      help='torchvision ResNet-50 checkpoint (e.g. resnet50-0676ba61.pth)')
  source.add_argument('--dinet', metavar='PATH.pth',
                      help='whole PyTorch DINet checkpoint (backbone, DIM, decoder)')
  parser.add_argument('--output', required=True, metavar='DIR', help='orbax output directory')
  parser.add_argument('--include-head', action='store_true',
                      help='keep the fc classifier (--torchvision only)')
  parser.add_argument('--rename', action='append', default=[], metavar='OLD=NEW',
                      help='replace the key prefix OLD by NEW (--dinet only; repeatable), '
                           'e.g. --rename encoder.=backbone.')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing DIR')
  args = parser.parse_args(argv)
  try:
    if args.dinet:
      if args.include_head:
        raise ValueError('--include-head applies to --torchvision checkpoints only')
      rename = {}
      for item in args.rename:
        if '=' not in item:
          raise ValueError(f'--rename expects OLD=NEW, got {item!r}')
        old, new = item.split('=', 1)
        rename[old] = new
      variables = torch_dinet_to_flax(args.dinet, rename=rename)
    else:
      if args.rename:
        raise ValueError('--rename applies to --dinet checkpoints only')
      variables = torchvision_resnet50_to_flax(args.torchvision,
                                               include_head=args.include_head)
    out = save_variables(variables, args.output, overwrite=args.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  import jax
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  print(f'Wrote {n:,} parameters (+ BatchNorm statistics) to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
