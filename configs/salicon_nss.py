"""DINet on SALICON at 320x480 trained with the NSS loss (for the paper's TVD+NSS ensemble).

    python train.py --workdir runs/salicon_nss --config configs/salicon_nss.py
    python eval.py --workdir runs/salicon_320x480 --ensemble runs/salicon_320x480,runs/salicon_nss

Same recipe as configs/salicon_320x480.py with loss 'nss' (negated NSS on the fixation
maps). Expected: higher NSS and lower CC/KLD quality than the TVD model; the average of
the two maps (the paper's ensemble) improves over either member.
"""

from configs import salicon_320x480


def get_config():
  config = salicon_320x480.get_config()
  config.loss = 'nss'
  return config
