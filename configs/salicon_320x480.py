"""DINet on SALICON at 320x480: the authors' recipe (the paper's main model).

    python -m dinet_jax.convert --torchvision data/resnet50-0676ba61.pth --output data/resnet50_imagenet
    python train.py --workdir runs/salicon_320x480 --config configs/salicon_320x480.py

Needs the SALICON dataset prepared (data/README.md) and converted ImageNet weights.
Adam 1e-4, batch 10, learning rate x0.1 every 2 epochs (floor 1e-7), up to 20 epochs,
early stopping with patience 10 on the validation loss, best checkpoint by validation
loss, no augmentation, linear-normalised TVD loss. Expected: the authors' released model
came from epoch 5 with validation TVD 0.2638 (training TVD 0.2038) on SALICON 2015 with
their Caffe-style ResNet; the paper's table numbers were lost in our copy of the text.
"""

from configs import default


def get_config():
  config = default.get_base_config()
  config.dataset = 'salicon/2015'
  config.image_size = (320, 480)
  config.batch_size = 10
  config.eval_batch_size = 10
  config.num_epochs = 20
  config.backbone_weights = 'data/resnet50_imagenet'
  config.checkpoint_every_steps = 500
  config.log_every_steps = 50
  config.eval_metrics = ('cc', 'kld', 'sim', 'nss', 'auc_judd')
  return config
