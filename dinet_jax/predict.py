"""Saliency maps for any images, and benchmark submission export.

    python -m dinet_jax.predict --checkpoint runs/default --output maps/ photo.jpg folder/
    python -m dinet_jax.predict --checkpoint runs/mit1003 --output mit300/ --format mit300 \
        data/mit300/BenchmarkIMAGES
    python -m dinet_jax.predict --checkpoint runs/salicon_320x480 --output salicon_test/ \
        --format salicon data/salicon/images/test

Each map is written as an 8-bit PNG at the image's own size (min-max scaled to 0..255,
as the authors' code did), optionally with a heat-map overlay (--overlay) and the raw
float map (--npy). Images are decoded as in training; EXIF orientation is applied;
grayscale and RGBA images are converted to RGB. Unreadable images are reported at the
end and the rest are still processed.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from typing import Iterable, Sequence

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def read_image(path: str | os.PathLike) -> np.ndarray:
  """uint8 (H, W, 3) RGB as the model saw images in training (TF's decoder), turned
  upright by the EXIF orientation. Raises ValueError naming the file if unreadable."""
  from PIL import Image

  from dinet_jax import input_pipeline

  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      data = f.read()
    pixels = input_pipeline.decode_image(data)
    with Image.open(path) as im:
      orientation = im.getexif().get(0x0112, 1)
  except Exception as e:  # TF, PIL and OS errors alike
    raise ValueError(f'Cannot read image {path!r}: {type(e).__name__}: '
                     f'{str(e).splitlines()[0][:200] if str(e) else ""}') from None
  method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(orientation)
  if method is not None:
    pixels = np.asarray(Image.fromarray(pixels).transpose(method))
  return pixels


class Predictor:
  """``Predictor(checkpoint).predict(image) -> (H, W) float32`` in [0, 1].

  ``checkpoint``: a training workdir (its best checkpoint) or a checkpoint directory.
  ``image``: uint8 (H, W, 3) RGB, (H, W) grayscale, (H, W, 4) RGBA, or a file path.
  """

  def __init__(self, checkpoint: str, which: str = 'best', batch_size: int = 8):
    from dinet_jax.trained import load_trained

    self.model = load_trained(checkpoint, which)
    self.batch_size = batch_size

  @property
  def image_size(self) -> tuple[int, int]:
    return self.model.image_size

  @staticmethod
  def _as_rgb(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
      return read_image(image)
    a = np.asarray(image)
    if a.ndim == 2:
      a = np.repeat(a[..., None], 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] == 4:
      a = a[..., :3]
    elif a.ndim == 3 and a.shape[-1] == 1:
      a = np.repeat(a, 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
      raise ValueError(f'Expected an (H, W), (H, W, 3) or (H, W, 4) image, got {a.shape}.')
    if a.dtype != np.uint8:
      raise ValueError(f'Expected uint8 pixels, got {a.dtype}.')
    return a

  def predict(self, image) -> np.ndarray:
    return self.predict_batch([image])[0]

  def predict_batch(self, images: Sequence) -> list[np.ndarray]:
    """Maps at each image's own size; images may differ in size."""
    from dinet_jax import input_pipeline

    rgb = [self._as_rgb(im) for im in images]
    out = []
    for start in range(0, len(rgb), self.batch_size):
      chunk = rgb[start:start + self.batch_size]
      x = np.stack([input_pipeline.preprocess_image(im, self.image_size) for im in chunk])
      # Padded to a power of two up to batch_size: a few batch shapes compile, and one
      # image costs one image's work, not batch_size images'.
      pad = min(self.batch_size, 1 << (len(chunk) - 1).bit_length()) - len(chunk)
      if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      maps = self.model(x)
      out += [input_pipeline.undo_padding(maps[i], im.shape[:2], self.image_size)
              for i, im in enumerate(chunk)]
    return out


def to_uint8(saliency: np.ndarray) -> np.ndarray:
  """Min-max scaling to 0..255 (a constant map becomes all zeros)."""
  lo, hi = float(saliency.min()), float(saliency.max())
  if hi <= lo:
    return np.zeros(saliency.shape, np.uint8)
  return np.round((saliency - lo) / (hi - lo) * 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """The image blended with a 'jet' heat map of the saliency map."""
  from matplotlib import colormaps

  heat = colormaps['jet'](to_uint8(saliency))[..., :3] * 255
  return np.clip((1 - alpha) * image + alpha * heat, 0, 255).astype(np.uint8)


def find_images(inputs: Iterable[str]) -> list[str]:
  """Files as given, and the images inside folders (recursively, sorted)."""
  files = []
  for path in inputs:
    if os.path.isdir(path):
      for root, _, names in sorted(os.walk(path)):
        files += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith('.')]
    else:
      files.append(path)
  return files


def _write_png(path: str, array: np.ndarray) -> None:
  from PIL import Image

  tmp = f'{path}.tmp-{os.getpid()}.png'
  Image.fromarray(array).save(tmp)
  os.replace(tmp, path)


def predict_files(predictor: Predictor, files: Sequence[str], output: str, *,
                  overlay_maps: bool = False, npy: bool = False, blur_sigma: float = 0.0,
                  progress: bool = True) -> tuple[list[str], list[str]]:
  """Writes ``<output>/<name>.png`` (and overlays / .npy) for each file.

  Returns (written map paths, error messages of files that could not be processed).
  Names are the file's stem; the benchmark formats need no more than that. Images are
  predicted ``predictor.batch_size`` at a time (:meth:`Predictor.predict_batch`).
  """
  from tqdm import tqdm

  from dinet_jax.evaluation import blur

  os.makedirs(output, exist_ok=True)
  written, errors = [], []
  stems = {}
  group = []  # (path, stem, image) read and waiting for their batch

  def flush():
    try:
      maps = predictor.predict_batch([image for *_, image in group])
    except ValueError:  # Find the image at fault; the others are still written.
      maps = []
      for path, _, image in group:
        try:
          maps.append(predictor.predict(image))
        except ValueError as e:
          errors.append(f'{path}: {e}')
          maps.append(None)
    for (_, stem, image), saliency in zip(group, maps):
      if saliency is None:
        continue
      saliency = blur(saliency, blur_sigma)
      target = os.path.join(output, stem + '.png')
      _write_png(target, to_uint8(saliency))
      written.append(target)
      if overlay_maps:
        _write_png(os.path.join(output, stem + '_overlay.png'), overlay(image, saliency))
      if npy:
        np.save(os.path.join(output, stem + '.npy'), saliency.astype(np.float32))
    group.clear()

  for path in tqdm(files, desc='predicting', unit='img', disable=not progress):
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in stems:
      errors.append(f'{path}: same output name as {stems[stem]}; skipped')
      continue
    stems[stem] = path
    try:
      group.append((path, stem, read_image(path)))
    except ValueError as e:
      errors.append(str(e))
      continue
    if len(group) == predictor.batch_size:
      flush()
  if group:
    flush()
  return written, errors


def zip_maps(paths: Sequence[str], zip_path: str) -> None:
  """A flat zip of the PNG maps (the SALICON challenge server takes one)."""
  tmp = f'{zip_path}.tmp-{os.getpid()}'
  with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
    for p in paths:
      z.write(p, arcname=os.path.basename(p))
  os.replace(tmp, zip_path)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m dinet_jax.predict',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('inputs', nargs='+', help='image files and/or folders')
  parser.add_argument('--checkpoint', required=True,
                      help='training workdir (best checkpoint) or checkpoint directory')
  parser.add_argument('--which', default='best', help="'best', 'latest' or a step")
  parser.add_argument('--output', required=True, help='output folder')
  parser.add_argument('--overlay', action='store_true', help='also write heat-map overlays')
  parser.add_argument('--npy', action='store_true', help='also write float32 .npy maps')
  parser.add_argument('--blur_sigma', type=float, default=0.0, help='Gaussian blur, pixels')
  parser.add_argument('--format', choices=('maps', 'mit300', 'salicon'), default='maps',
                      help='mit300: one PNG per benchmark image (same name, full size); '
                           'salicon: PNGs plus submission.zip for the challenge server')
  parser.add_argument('--batch_size', type=int, default=8)
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

  files = find_images(args.inputs)
  if not files:
    print(f'error: no images found in {args.inputs}', file=sys.stderr)
    return 2
  try:
    predictor = Predictor(args.checkpoint, args.which, args.batch_size)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  written, errors = predict_files(predictor, files, args.output, overlay_maps=args.overlay,
                                  npy=args.npy, blur_sigma=args.blur_sigma)
  if args.format == 'mit300' and len(written) != 300:
    print(f'warning: MIT300 has 300 images, wrote {len(written)}', file=sys.stderr)
  if args.format == 'salicon':
    zip_maps(written, os.path.join(args.output, 'submission.zip'))
  print(f'Wrote {len(written)} maps to {args.output}')
  if errors:
    print(f'{len(errors)} image(s) could not be processed:', file=sys.stderr)
    for e in errors:
      print(f'  {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  from dinet_jax import host_memory
  host_memory.restart_with_malloc_tuning()
  sys.exit(main())
