"""Default: a reduced DINet trained from scratch on the embedded saliency_popout data.

    python train.py --workdir runs/default

Runs on 2 CPU cores in under 10 minutes (the dataset is generated on first use). The
model keeps DINet's structure (dilated ResNet-50 layout, DIM, 3-conv decoder) at reduced
size: backbone width 16 with one block per stage, 64-channel DIM and decoder, because
ImageNet weights cannot be assumed here and a full ResNet-50 does not train from scratch
on CPU in minutes. Two further departures from the paper, for training from scratch on
96x128 images: BatchNorm is trained (there are no ImageNet statistics to freeze), and
the DIM rates are (2, 4, 8) since the feature map is only 12x16 (rate 16 would read
padding only). Expected: validation CC about 0.5 against the centre-bias baseline's 0.1
(printed side by side each epoch); README.md gives the measured figures.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The paper's DINet (``dinet_jax.models.create_model`` fields)."""
  return ml_collections.ConfigDict(dict(
      architecture='dinet',  # see dinet_jax/models/factory.py and configs/variants.py
      backbone='resnet50',
      backbone_width=64,
      stage_sizes=(3, 4, 6, 3),
      dilated=True,
      train_bn=False,
      context='dim',
      context_features=256,
      rates=(4, 8, 16),
      fusion='sum',
      decoder='conv',
      decoder_features=256,
      decoder_layers=2,
      dtype='float32',
  ))


def get_base_config() -> ml_collections.ConfigDict:
  """Fields shared by every config; the paper's training recipe where it applies."""
  config = ml_collections.ConfigDict()
  config.dataset = 'saliency_popout'
  config.data_dir = 'data/tfds'  # prepared TFDS datasets
  config.manual_dir = 'data'  # user-downloaded archives / extracted folders
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.image_size = (96, 128)  # (height, width) of the model input
  config.flip = False  # the authors used no augmentation
  config.batch_size = 10  # global, over all devices and processes
  config.eval_batch_size = 20
  config.num_epochs = 20
  config.max_train_steps = 0  # > 0: stop after this many steps in total
  config.loss = 'linear_tvd'
  config.learning_rate = 1e-4
  config.lr_decay_epochs = 2
  config.lr_decay_factor = 0.1
  config.lr_floor = 1e-7
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.early_stopping_patience = 10  # epochs without a better validation loss
  config.parallelism = 'jit'  # or 'pmap'
  config.seed = 0
  config.backbone_weights = ''  # converted torchvision ResNet-50 (python -m dinet_jax.convert)
  config.init_from = ''  # a workdir or checkpoint to fine-tune from (params only)
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 20
  config.num_summary_images = 4  # predicted maps next to ground truth in TensorBoard
  config.eval_metrics = ('cc', 'kld', 'sim', 'nss', 'auc_judd')
  config.model = get_model_config()
  return config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.model.backbone_width = 16
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.context_features = 64
  config.model.decoder_features = 64
  config.model.train_bn = True
  config.model.rates = (2, 4, 8)
  config.batch_size = 16
  config.eval_batch_size = 40
  config.learning_rate = 1e-3
  config.lr_decay_epochs = 3
  config.num_epochs = 4
  config.checkpoint_every_steps = 200
  return config
