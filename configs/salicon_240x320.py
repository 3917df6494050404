"""DINet on SALICON at 240x320 (the paper's input-size ablation and ensemble member).

    python train.py --workdir runs/salicon_240x320 --config configs/salicon_240x320.py

Same recipe as configs/salicon_320x480.py at 240x320 (about 0.02 s per image on a GTX
1080 Ti in the paper). Expected: slightly below the 320x480 model on SALICON validation.
"""

from configs import salicon_320x480


def get_config():
  config = salicon_320x480.get_config()
  config.image_size = (240, 320)
  return config
