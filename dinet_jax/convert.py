"""Converts torchvision ResNet-50 checkpoints into Flax variables for ``ResNet50``.

    python -m dinet_jax.convert --torchvision resnet50-0676ba61.pth --output data/resnet50_v1

writes an orbax checkpoint of ``{'params': ..., 'batch_stats': ...}`` that training reads
through ``config.backbone_weights``. Conv kernels go from torch's OIHW to HWIO, BatchNorm
``weight/bias/running_mean/running_var`` to ``scale/bias/mean/var``; ``num_batches_tracked``
is dropped.
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
  parser.add_argument('--torchvision', required=True, metavar='PATH.pth',
                      help='torchvision ResNet-50 checkpoint (e.g. resnet50-0676ba61.pth)')
  parser.add_argument('--output', required=True, metavar='DIR', help='orbax output directory')
  parser.add_argument('--include-head', action='store_true', help='keep the fc classifier')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing DIR')
  args = parser.parse_args(argv)
  try:
    variables = torchvision_resnet50_to_flax(args.torchvision, include_head=args.include_head)
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
