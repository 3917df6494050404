"""eval.py's library, ensembles, and the predictor on a tiny trained run."""

import csv
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from dinet_jax import eval_lib, evaluation, predict, training
from dinet_jax.evaluation import ALL_METRICS

from test_training import tiny_config


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_eval')
  workdir = str(tmp_path_factory.mktemp('run'))
  training.train_and_evaluate(tiny_config(data_dir, num_epochs=1), workdir)
  return workdir


def test_evaluate_run_writes_all_metrics_with_a_baseline_row(run_dir, tmp_path):
  out = str(tmp_path / 'eval.json')
  rows, json_path, csv_path = eval_lib.evaluate_runs([run_dir], output=out)
  assert json_path == out
  with open(out) as f:
    saved = json.load(f)
  assert set(ALL_METRICS) <= set(saved)
  assert saved['num_images'] == 16 and saved['dataset'] == 'saliency_popout/tiny'
  assert set(rows) == {'centre bias', os.path.basename(run_dir)}
  for row in rows.values():
    assert all(np.isfinite(row[m]) for m in ALL_METRICS)
  # The centre-bias map is its own information-gain baseline.
  assert abs(rows['centre bias']['information_gain']) < 1e-6
  with open(csv_path) as f:
    lines = list(csv.DictReader(f))
  assert len(lines) == 16
  per_image_cc = np.mean([float(r['cc']) for r in lines])
  assert per_image_cc == pytest.approx(saved['cc'], abs=1e-5)


def test_ensemble_of_a_model_with_itself_scores_like_the_model(run_dir, tmp_path):
  names = ('cc', 'nss', 'auc_judd', 'sim')
  rows, _, _ = eval_lib.evaluate_runs([run_dir, run_dir], ensemble=True, metric_names=names,
                                      output=str(tmp_path / 'e.json'))
  member = rows[os.path.basename(run_dir)]
  # Metrics invariant to an affine rescaling of the map agree with the member.
  for name in names:
    assert rows['ensemble'][name] == pytest.approx(member[name], abs=1e-4)


def test_blur_changes_the_scores(run_dir, tmp_path):
  plain, _, _ = eval_lib.evaluate_runs([run_dir], metric_names=('cc',),
                                       output=str(tmp_path / 'a.json'))
  blurred, _, _ = eval_lib.evaluate_runs([run_dir], metric_names=('cc',), blur_sigma=3.0,
                                         output=str(tmp_path / 'b.json'))
  key = os.path.basename(run_dir)
  assert plain[key]['cc'] != pytest.approx(blurred[key]['cc'], abs=1e-6)


def write_images(folder):
  rng = np.random.default_rng(0)
  rgb = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
  os.makedirs(folder, exist_ok=True)
  Image.fromarray(rgb).save(os.path.join(folder, 'rgb.png'))
  Image.fromarray(rgb[..., 0]).save(os.path.join(folder, 'gray.png'))
  Image.fromarray(np.concatenate([rgb, np.full((37, 53, 1), 7, np.uint8)], -1)).save(
      os.path.join(folder, 'rgba.png'))
  im = Image.fromarray(rgb)
  exif = im.getexif()
  exif[0x0112] = 6  # rotated: displayed 53 wide... as 37 x 53 turned upright
  im.save(os.path.join(folder, 'rotated.jpg'), exif=exif, quality=95)
  with open(os.path.join(folder, 'broken.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff not a jpeg')
  return rgb


def test_predictor_maps_have_each_images_size(run_dir, tmp_path):
  rgb = write_images(tmp_path / 'in')
  predictor = predict.Predictor(run_dir)
  batches, apply = [], predictor.model._apply
  predictor.model._apply = lambda v, x: batches.append(len(x)) or apply(v, x)
  single = predictor.predict(rgb)
  assert single.shape == (37, 53) and single.dtype == np.float32
  assert 0.0 <= single.min() and single.max() <= 1.0
  batch = predictor.predict_batch([rgb, rgb[:20], rgb[..., 0]])
  assert [m.shape for m in batch] == [(37, 53), (20, 53), (37, 53)]
  np.testing.assert_allclose(batch[0], single, atol=1e-6)
  # Grayscale input equals its RGB replication.
  gray3 = np.repeat(rgb[..., :1], 3, axis=-1)
  np.testing.assert_allclose(batch[2], predictor.predict(gray3), atol=1e-6)
  assert predict.read_image(tmp_path / 'in' / 'rotated.jpg').shape == (53, 37, 3)
  # Batches are padded to powers of two up to batch_size (8), not always to 8.
  assert predictor.predict_batch([rgb] * 9)[8].shape == (37, 53)
  assert batches == [1, 4, 1, 8, 1]


def test_predict_command_reports_bad_files_and_writes_the_rest(run_dir, tmp_path):
  write_images(tmp_path / 'in')
  out = tmp_path / 'out'
  # Sorted, broken.jpg fails to read; batches of 3: gray, rgb, rgba, then rotated.
  code = predict.main(['--checkpoint', run_dir, '--output', str(out), '--overlay', '--npy',
                       '--format', 'salicon', '--batch_size', '3', str(tmp_path / 'in')])
  assert code == 1  # broken.jpg
  for stem, hw in [('rgb', (37, 53)), ('gray', (37, 53)), ('rgba', (37, 53)),
                   ('rotated', (53, 37))]:
    png = np.asarray(Image.open(out / f'{stem}.png'))
    assert png.shape == hw and png.dtype == np.uint8 and png.max() == 255
    assert np.asarray(Image.open(out / f'{stem}_overlay.png')).shape == (*hw, 3)
    raw = np.load(out / f'{stem}.npy')
    np.testing.assert_array_equal(predict.to_uint8(raw), png)
  # Each map went to its own file: RGBA drops its alpha, gray differs.
  np.testing.assert_allclose(np.load(out / 'rgba.npy'), np.load(out / 'rgb.npy'), atol=1e-6)
  assert np.abs(np.load(out / 'gray.npy') - np.load(out / 'rgb.npy')).max() > 1e-4
  assert not (out / 'broken.png').exists()
  with zipfile.ZipFile(out / 'submission.zip') as z:
    assert sorted(z.namelist()) == ['gray.png', 'rgb.png', 'rgba.png', 'rotated.png']


def test_predict_files_reports_an_image_the_model_rejects(tmp_path):
  """A batch that fails is predicted image by image: the image at fault is reported with
  its path and the others are written."""
  write_images(tmp_path / 'in')

  class Stub:
    batch_size = 8

    def predict(self, image):
      if image.shape[:2] != (37, 53):
        raise ValueError(f'unexpected size {image.shape[:2]}')
      return image[..., 0].astype(np.float32) / 255

    def predict_batch(self, images):
      return [self.predict(im) for im in images]

  files = predict.find_images([str(tmp_path / 'in')])
  written, errors = predict.predict_files(Stub(), files, str(tmp_path / 'out'), npy=True,
                                          progress=False)
  assert sorted(os.path.basename(p) for p in written) == ['gray.png', 'rgb.png', 'rgba.png']
  assert len(errors) == 2 and 'broken.jpg' in errors[0]
  assert errors[1] == f'{tmp_path / "in" / "rotated.jpg"}: unexpected size (53, 37)'
  rgb = np.asarray(Image.open(tmp_path / 'in' / 'rgb.png'))
  np.testing.assert_allclose(np.load(tmp_path / 'out' / 'rgb.npy'), rgb[..., 0] / 255,
                             rtol=1e-6)


def test_panel_denormalises_images():
  from dinet_jax import input_pipeline
  rgb = (np.random.default_rng(1).random((4, 5, 3)) * 255).astype(np.uint8)
  pred = np.linspace(0.2, 0.4, 20).reshape(4, 5)
  p = evaluation.panel(input_pipeline.normalize_image(rgb), np.zeros((4, 5)), pred)
  assert p.shape == (4, 15, 3)
  assert np.max(np.abs(p[:, :5].astype(int) - rgb)) <= 1
  assert (p[:, 5:10] == 0).all()
  assert p[0, 10, 0] == 0 and p[-1, -1, 0] == 255  # prediction min-max scaled


def test_visualize_command_writes_the_grid(run_dir, tmp_path):
  from dinet_jax import visualize
  out = tmp_path / 'grid.png'
  assert visualize.main(['--workdir', run_dir, '--output', str(out), '--num_images', '3',
                         '--scale', '1']) == 0
  assert np.asarray(Image.open(out)).shape == (3 * 48, 3 * 64, 3)


def test_eval_command_prints_the_table(run_dir):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, os.path.join(repo, 'eval.py'), f'--workdir={run_dir}',
                         '--metrics=cc,nss'], cwd=repo, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  assert lines[0].split() == ['model', 'cc', 'nss']
  assert lines[2].startswith('centre bias') and lines[3].startswith(os.path.basename(run_dir))
  assert os.path.exists(os.path.join(run_dir, 'eval', 'saliency_popout_tiny_validation.json'))
