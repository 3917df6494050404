"""DINet on SALICON at 480x640, full resolution (input-size ablation, ensemble member).

    python train.py --workdir runs/salicon_480x640 --config configs/salicon_480x640.py

Same recipe as configs/salicon_320x480.py at 480x640 (about 0.06 s per image on a GTX
1080 Ti in the paper). On accelerators, --config.model.dtype=bfloat16 halves memory.
Expected: close to the 320x480 model; the paper found 320x480 the best trade-off.
"""

from configs import salicon_320x480


def get_config():
  config = salicon_320x480.get_config()
  config.image_size = (480, 640)
  return config
