"""A few hundred real photos, from scratch, on a CPU: about 25 minutes on 2 cores.

    python -m trainer.train --config=configs/small_data_cpu.py --data_root=DATA \
        --workdir=runs/small

For a folder of real photos with masks (the train/ + valid/ layout, or one
folder that `prepare` splits) and no pretrained weights: no download, no GPU.
The choices below were made with `python -m benchmarks.recipe` on a slice held
out of a real data set's train/ split, one change at a time (see
benchmarks/RESULTS.md); the valid/ split was scored once, at the end. On
Kvasir-SEG (800 train / 100 valid photos) it reached validation IoU 0.676 in
21.8 minutes on 2 cores of an Intel Xeon.

Same loss, optimizer and augmentations as configs/nail_unet_effb4.py; a
ResNet-18 U-Net with a narrow decoder, float32 (CPUs gain nothing from float16).
"""

from configs import nail_unet_effb4


def get_config():
    """Returns the small-data CPU configuration."""
    config = nail_unet_effb4.get_config()
    config.data.image_size = 160
    config.data.batch_size = 16
    config.model.backbone = "resnet18"
    config.model.encoder_weights = "none"  # from scratch: nothing to download.
    config.model.decoder_filters = (128, 64, 32, 16, 16)
    config.train.steps = 1500
    config.train.epochs = 0
    config.train.learning_rate = 3e-3
    config.train.lr_schedule = "cosine"
    config.train.warmup_steps = 50
    config.train.precision = "float32"
    config.train.eval_every = 100
    config.train.log_every = 25
    config.train.steps_per_execution = 5
    return config
