"""Fine-tunes a SALICON-trained DINet on MIT1003 at 320x480 (for MIT300 submissions).

    python train.py --workdir runs/mit1003 --config configs/mit1003_finetune.py \
        --config.init_from=runs/salicon_320x480

Starts from the best checkpoint of a SALICON run (parameters only, fresh optimiser),
trains on the 903 training images of the mit1003 builder's default split and validates
on the other 100, images resized with the aspect ratio kept and zero-padded to 320x480.
For k-fold cross-validation use --config.dataset=mit1003/kfold10 with
--config.eval_split=fold3 and --config.train_split set to the other folds
(``dinet_jax.datasets.kfold_splits(10, 3)`` gives both strings). Expected: validation CC
and NSS on MIT1003 clearly above the SALICON model's before fine-tuning.
"""

from configs import salicon_320x480


def get_config():
  config = salicon_320x480.get_config()
  config.dataset = 'mit1003'
  config.backbone_weights = ''
  config.init_from = 'runs/salicon_320x480'
  config.batch_size = 10
  config.learning_rate = 1e-5
  config.num_epochs = 10
  config.checkpoint_every_steps = 100
  return config
