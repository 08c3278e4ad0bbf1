"""Minutes on 2 CPU cores: a small U-Net on the synthetic nail data set.

    python -m trainer.synthetic --output_dir=data/synthetic
    python -m trainer.train --config=configs/demo_cpu.py --data_root=data/synthetic \
        --workdir=runs/demo

Same recipe as configs/nail_unet_effb4.py (Dice + Focal, RectifiedAdam, the
seed's augmentations), shrunk: ResNet-18 encoder from scratch, a narrower
decoder, 96 px, float32 (CPUs gain nothing from float16). 96 px costs 0.56x
the compute of 128 px, which CPUs without AVX-512 need (on 2 cores of an AMD
EPYC Zen 3 the two demos side by side took 22.5 minutes at 96 px), for a
lower validation IoU at step 600: 0.850 against 0.887 at 128 px (on an AMD
EPYC with AVX-512; not measured at 128 px on the Zen 3;
`--config.data.image_size=128` restores it).
"""

from configs import nail_unet_effb4


def get_config():
    """Returns the CPU demo configuration."""
    config = nail_unet_effb4.get_config()
    config.data.image_size = 96
    config.data.batch_size = 16
    config.model.backbone = "resnet18"
    config.model.encoder_weights = "none"  # no download: trains from scratch.
    config.model.decoder_filters = (128, 64, 32, 16, 16)
    config.train.steps = 600
    config.train.epochs = 0
    config.train.lr_schedule = "cosine"
    config.train.warmup_steps = 50
    config.train.precision = "float32"
    config.train.eval_every = 100
    config.train.log_every = 25
    config.train.steps_per_execution = 5
    return config
