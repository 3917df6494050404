"""Branch visualisation and evaluation of a DINet with a second, linear decoder
(paper Sec. IV-E, Fig. 5 and Table VI).

Train the model (``architecture='two_decoders'``; both decoders get the same loss)::

    python train.py --workdir runs/two_decoders --config=configs/variants.py:two_decoders

Maps decoded from each branch, each pair and all three, next to the image and ground
truth (one PNG per image)::

    python -m dinet_jax.branch_vis --workdir runs/two_decoders --output out/ a.jpg b.jpg \
        [--maps a_map.png b_map.png]
    python -m dinet_jax.branch_vis --workdir runs/two_decoders --output out/ \
        --split validation --num_images 5          # images and maps of the run's dataset

Table VI (metrics of the linear decoder fed with single branches and branch sums, and of
the original decoder fed with all branches)::

    python -m dinet_jax.branch_vis --workdir runs/two_decoders --output out/ --evaluate

Conventions (the paper is silent on them):

* Orientation. Linear-normalised losses are invariant to the sign of the map
  (``x / sum(x)``), so the linear decoder may learn the saliency map times a negative
  factor. Every linearly decoded map of an image is multiplied by the sign of the sum
  of the map decoded from all branches, which keeps the decomposition linear
  (the oriented maps of the branches still add up to the oriented full map).
* Display: every panel is min-max scaled on its own (negative, suppressive parts of a
  branch's map appear dark).
* Metrics: linear maps are oriented, cropped to the image and resized to its original
  size (as every prediction), then min-max scaled to [0, 1] before scoring (KLD and SIM
  need non-negative maps; AUC, NSS and CC are unaffected).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np

LINEAR, MAIN = 'linear', 'main'


def load_run(workdir: str, checkpoint: str = 'best') -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """(model, variables, meta) of a trained ``two_decoders`` run."""
  from dinet_jax import checkpoints
  from dinet_jax.models import create_model
  from dinet_jax.models.branch_vis import TwoDecoderDINet

  variables, meta = checkpoints.load_checkpoint(workdir, checkpoint)
  model = create_model(meta['model'])
  if not isinstance(model, TwoDecoderDINet):
    raise ValueError(
        f'{workdir} is not a two-decoder DINet run (model.architecture='
        f'{meta["model"].get("architecture", "dinet")!r}); train one with '
        f'--config=configs/variants.py:two_decoders.')
  return model, variables, meta


def subset_label(subset: Sequence[int], rates: Sequence[int]) -> str:
  return '+'.join(f'b{i}(r{rates[i]})' for i in subset)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def decode_subsets(model: Any, variables: dict[str, Any], images: Any, decoder: str,
                   subsets: tuple[tuple[int, ...], ...]) -> dict[tuple[int, ...], Any]:
  """Jitted ``TwoDecoderDINet.decode_subsets`` (compiled once per model, decoder, subsets
  and input shape, shared by every caller)."""
  from dinet_jax.models.branch_vis import TwoDecoderDINet

  return model.apply(variables, images, subsets, decoder,
                     method=TwoDecoderDINet.decode_subsets)


class BranchDecoder:
  """Decoding of branch subsets of a ``TwoDecoderDINet`` with given variables."""

  def __init__(self, model: Any, variables: dict[str, Any]):
    from dinet_jax.models.branch_vis import all_subsets

    self.model = model
    self.variables = variables
    self.rates = tuple(model.context.rates)
    self.subsets = all_subsets(len(self.rates))
    self.full = tuple(range(len(self.rates)))

  def __call__(self, images: np.ndarray, decoder: str = LINEAR,
               subsets: Sequence[Sequence[int]] | None = None) -> dict[tuple[int, ...], np.ndarray]:
    """``{subset: (N, H, W) float32}`` at the input size (default: every subset);
    linear maps oriented (see the module docstring)."""
    subsets = tuple(tuple(int(i) for i in s) for s in (subsets or self.subsets))
    if decoder == LINEAR and self.full not in subsets:
      subsets += (self.full,)  # needed for the orientation
    # Keys come back sorted; keep the requested order.
    maps = decode_subsets(self.model, self.variables, images, decoder, subsets)
    out = {k: np.asarray(maps[k], np.float32)[..., 0] for k in subsets}
    if decoder == LINEAR:
      sign = np.where(out[self.full].sum(axis=(1, 2)) < 0, -1.0, 1.0).astype(np.float32)
      out = {k: v * sign[:, None, None] for k, v in out.items()}
    return out


def minmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  lo, hi = float(x.min()), float(x.max())
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _label(panel: np.ndarray, text: str, height: int = 14) -> np.ndarray:
  from PIL import Image, ImageDraw

  strip = Image.new('RGB', (panel.shape[1], height), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0))
  return np.concatenate([np.asarray(strip), panel], axis=0)


def _gray(m: np.ndarray) -> np.ndarray:
  return np.repeat((np.clip(m, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _fit_height(a: np.ndarray, height: int) -> np.ndarray:
  if not height or a.shape[0] <= height:
    return a
  from PIL import Image

  width = max(1, round(a.shape[1] * height / a.shape[0]))
  return np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR))


def figure(image: np.ndarray, truth: np.ndarray | None, maps: dict[str, np.ndarray],
           max_height: int = 240, gap: int = 2) -> np.ndarray:
  """uint8 (h, w, 3): image | ground truth | one labelled panel per map (min-max scaled)."""
  panels = [('image', np.asarray(image, np.uint8))]
  if truth is not None:
    panels.append(('ground truth', _gray(minmax(truth))))
  panels += [(name, _gray(minmax(m))) for name, m in maps.items()]
  panels = [_label(_fit_height(p, max_height), name) for name, p in panels]
  h = max(p.shape[0] for p in panels)
  row = []
  for p in panels:
    p = np.pad(p, ((0, h - p.shape[0]), (0, gap), (0, 0)), constant_values=255)
    row.append(p)
  return np.concatenate(row, axis=1)[:, :-gap]


def panel_maps(linear: dict[tuple[int, ...], np.ndarray], main: np.ndarray, i: int,
               rates: Sequence[int]) -> dict[str, np.ndarray]:
  """The panels of example ``i``: every subset via the linear decoder, then DINet's map."""
  maps = {f'lin {subset_label(s, rates)}': v[i] for s, v in linear.items()}
  maps['DINet (main decoder)'] = main[i]
  return maps


def _save_png(path: str, array: np.ndarray) -> None:
  from PIL import Image

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(array).save(path)


def visualise_files(model: Any, variables: dict[str, Any], meta: dict[str, Any],
                    images: Sequence[str], output: str, maps: Sequence[str] | None = None,
                    max_height: int = 240) -> list[str]:
  """One side-by-side PNG per image file, at the image's original size."""
  from PIL import Image

  from dinet_jax import input_pipeline

  dec = BranchDecoder(model, variables)
  size = tuple(meta['image_size'])
  written = []
  for k, path in enumerate(images):
    rgb = input_pipeline.decode_image(path)
    hw = rgb.shape[:2]
    x = input_pipeline.preprocess_image(rgb, size)[None]
    linear = {s: input_pipeline.undo_padding(v[0], hw, size)[None]
              for s, v in dec(x, LINEAR).items()}
    main = input_pipeline.undo_padding(dec(x, MAIN, [dec.full])[dec.full][0], hw, size)[None]
    truth = None
    if maps:
      with Image.open(maps[k]) as im:
        truth = np.asarray(im.convert('L').resize((hw[1], hw[0]), Image.BILINEAR),
                           np.float32) / 255.0
    out = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + '_branches.png')
    _save_png(out, figure(rgb, truth, panel_maps(linear, main, 0, dec.rates), max_height))
    written.append(out)
  return written


def _eval_config(meta: dict[str, Any], split: str, data_dir: str, batch_size: int) -> Any:
  import ml_collections

  return ml_collections.ConfigDict(dict(
      dataset=meta.get('dataset', 'saliency_popout'), data_dir=data_dir, eval_split=split,
      image_size=tuple(meta['image_size']), eval_batch_size=batch_size))


def visualise_split(model: Any, variables: dict[str, Any], meta: dict[str, Any], output: str,
                    split: str = 'validation', num_images: int = 5,
                    data_dir: str = 'data/tfds', max_height: int = 240) -> list[str]:
  """Side-by-side PNGs of the first ``num_images`` examples of a split (model frame)."""
  from dinet_jax import input_pipeline

  config = _eval_config(meta, split, data_dir, batch_size=max(1, min(num_images, 16)))
  dec = BranchDecoder(model, variables)
  mean, std = np.asarray(input_pipeline.IMAGENET_MEAN), np.asarray(input_pipeline.IMAGENET_STD)
  written = []
  for batch in input_pipeline.create_eval_iterator(
      config.dataset, split, data_dir=data_dir, image_size=config.image_size,
      batch_size=config.eval_batch_size, num_devices=1):
    linear = dec(batch['image'], LINEAR)
    main = dec(batch['image'], MAIN, [dec.full])[dec.full]
    for i in np.flatnonzero(batch['mask']):
      if len(written) >= num_images:
        return written
      rgb = np.clip((batch['image'][i] * std + mean) * 255, 0, 255).astype(np.uint8)
      name = str(batch['image_id'][i]).replace('/', '_')
      out = os.path.join(output, f'{name}_branches.png')
      _save_png(out, figure(rgb, batch['saliency'][i, ..., 0],
                            panel_maps(linear, main, i, dec.rates), max_height))
      written.append(out)
  return written


def evaluate_branches(model: Any, variables: dict[str, Any], meta: dict[str, Any],
                      split: str = 'validation', data_dir: str = 'data/tfds',
                      metric_names: Sequence[str] = ('auc_judd', 'sauc', 'nss', 'cc'),
                      batch_size: int = 20, main_subsets: bool = False,
                      max_images: int = 0) -> dict[str, dict[str, float]]:
  """Table VI: mean metrics of every branch subset decoded by the linear decoder, and
  of all branches decoded by the original decoder (= DINet's prediction).

  ``main_subsets``: also feed every subset to the original decoder. Returns
  ``{row name: {metric: mean}}`` in table order. Scored at the original resolution by
  ``dinet_jax.evaluation.Evaluator`` (MIT protocol).
  """
  from dinet_jax import evaluation

  config = _eval_config(meta, split, data_dir, batch_size)
  evaluator = evaluation.Evaluator(config, metric_names=metric_names)
  dec = BranchDecoder(model, variables)
  rows = [(LINEAR, s) for s in dec.subsets]
  rows += [(MAIN, s) for s in (dec.subsets if main_subsets else [dec.full])]
  key = lambda d, s: f'{d} decoder, {subset_label(s, dec.rates)}'
  keys = [key(d, s) for d, s in rows]

  main_rows = [s for d, s in rows if d == MAIN]
  cache: dict[str, Any] = {}

  def decoded(batch):
    """Every map of a batch, computed once for all the rows' predictors."""
    if cache.get('batch') is not batch:
      cache.update(batch=batch, maps={LINEAR: dec(batch['image'], LINEAR),
                                      MAIN: dec(batch['image'], MAIN, main_rows)})
    return cache['maps']

  predictors = {key(d, s): (config.image_size, lambda b, d=d, s=s: decoded(b)[d][s])
                for d, s in rows}

  def minmax_scaled(examples):  # the evaluator has cropped and resized them already
    for n, e in enumerate(examples):
      if max_images and n >= max_images:
        return
      for k in keys:
        e[k] = minmax(e[k])
      yield e

  scores = evaluator.score_examples(
      minmax_scaled(evaluator.examples(predictors, split)), split, keys=keys)
  return {k: evaluation.means(scores[k]) for k in keys}


def format_markdown(table: dict[str, dict[str, float]]) -> str:
  names = list(next(iter(table.values())))
  lines = ['| input | ' + ' | '.join(names) + ' |',
           '|---|' + '---:|' * len(names)]
  lines += [f'| {row} | ' + ' | '.join(f'{v[n]:.4f}' for n in names) + ' |'
            for row, v in table.items()]
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description='Branch maps of a two-decoder DINet (Fig. 5) and Table VI.')
  parser.add_argument('--workdir', required=True, help='a run trained with two_decoders')
  parser.add_argument('--output', required=True, help='directory for PNGs / the table')
  parser.add_argument('--checkpoint', default='best', help="'best', 'latest' or a step")
  parser.add_argument('images', nargs='*', help='image files to visualise')
  parser.add_argument('--maps', nargs='*', help='ground-truth maps, one per image')
  parser.add_argument('--split', default=None,
                      help="visualise (or with --evaluate, score) this split of the run's "
                      'dataset')
  parser.add_argument('--num_images', type=int, default=5, help='with --split')
  parser.add_argument('--data_dir', default='data/tfds')
  parser.add_argument('--max_height', type=int, default=240, help='panel height limit')
  parser.add_argument('--evaluate', action='store_true',
                      help='write Table VI (branch subsets through the decoders)')
  parser.add_argument('--metrics', default='auc_judd,sauc,nss,cc')
  parser.add_argument('--main_subsets', action='store_true',
                      help='--evaluate: also feed every subset to the original decoder')
  args = parser.parse_args(argv)
  if args.maps and len(args.maps) != len(args.images):
    parser.error('--maps needs one map per image')
  if not (args.images or args.split or args.evaluate):
    parser.error('give image files, --split or --evaluate')

  model, variables, meta = load_run(args.workdir, args.checkpoint)
  os.makedirs(args.output, exist_ok=True)
  if args.images:
    for path in visualise_files(model, variables, meta, args.images, args.output, args.maps,
                                args.max_height):
      print(path)
  if args.split and not args.evaluate:
    for path in visualise_split(model, variables, meta, args.output, args.split,
                                args.num_images, args.data_dir, args.max_height):
      print(path)
  if args.evaluate:
    split = args.split or 'validation'
    table = evaluate_branches(model, variables, meta, split, args.data_dir,
                              tuple(args.metrics.split(',')), main_subsets=args.main_subsets)
    text = format_markdown(table)
    path = os.path.join(args.output, f'table6_{split}.md')
    with open(path, 'w') as f:
      f.write(f'Branch subsets of {args.workdir} ({args.checkpoint} checkpoint, step '
              f'{meta.get("step")}) on {meta.get("dataset")}/{split}\n\n{text}\n')
    print(text)
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
