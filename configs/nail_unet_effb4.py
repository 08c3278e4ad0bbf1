"""The seed tutorial's setup: U-Net + EfficientNet-B4 on nail photos at 384 px.

Dice + binary Focal loss, RectifiedAdam at 1e-3, global batch 32, 100 epochs,
mixed float16 with ImageNet encoder weights, IoU/F-score at threshold 0.5.

    python -m trainer.train --config=configs/nail_unet_effb4.py \
        --data_root=/data/nails --workdir=/work/runs/effb4 --strategy=mirrored

Any field can be overridden on the command line, e.g.
`--config.train.epochs=10 --config.data.batch_size=64`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Returns the seed's configuration."""
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.image_size = 384  # px; square side the model sees.
    # stretch: resize each photo to the square | pad: keep its proportions, zero-pad to a square |
    # crop: keep its proportions, scale its short side to crop_scale * image_size, and train on
    # random squares of image_size cut from it (predict, evaluate and the export tile it).
    config.data.resize = "stretch"
    config.data.crop_scale = 2.0
    config.data.batch_size = 32  # global batch (all replicas together).
    config.data.balanced = False  # True: sample the groups (sub-folders) evenly.
    config.data.augment = True  # the seed's albumentations transforms when training.
    config.data.vertical_flip = False  # also flip upside down (photos without an up).
    # How far the augmentations go: 1 = the seed's ranges, 0.5 = half its zoom, rotation,
    # noise, blur and colour changes (each still fires as often), up to 2.
    config.data.augment_strength = 1.0
    config.data.valid_fraction = 0.2  # held out per group when there is no valid/ folder.
    config.data.num_parallel_calls = 0  # decode/augment threads per pipeline; 0 = derived.
    config.data.prefetch_batches = 0  # batches buffered per pipeline; 0 = derived.
    # disk: decode and resize each pair once, keep it raw for every epoch and run
    # (s*s*4 bytes a pair: 0.56 MiB at 384 px); none: decode every time.
    config.data.cache = "disk"
    config.data.cache_dir = ""  # "" = WORKDIR/cache.
    # Records folders read uncached (prepare --records): pairs shuffled in a buffer
    # of encoded files per input pipeline (memory: this many photo files).
    config.data.shuffle_buffer = 1000
    # Multi-class only (model.num_classes >= 2): mask value counted in neither loss nor metrics.
    config.data.ignore_label = 255
    # Names of the classes in logs, reports and pictures, class 0 first; () = defaults.
    config.data.class_names = ()

    config.model = ml_collections.ConfigDict()
    config.model.arch = "unet"  # unet | fpn | linknet | pspnet
    # 1: binary (one sigmoid channel, 0/255 masks); K >= 2: K softmax classes, class 0 the
    # background, label-index masks holding 0..K-1.
    config.model.num_classes = 1
    config.model.backbone = "efficientnetb4"  # any segmentation_models backbone.
    config.model.encoder_weights = "imagenet"  # imagenet | none | path to a local .h5 file.
    config.model.encoder_freeze = False  # True: train the decoder only.
    # Unet decoder widths, deepest first (segmentation_models' default).
    config.model.decoder_filters = (256, 128, 64, 32, 16)
    # Synchronised batch norm across replicas; None = on when there is more than one replica.
    config.model.sync_batchnorm = config_dict.placeholder(bool)
    # Momentum of every batch norm's moving statistics; 0 = the backbone's own (0.99 for
    # ResNets, 0.999 for MobileNets and EfficientNets: too slow for short runs from scratch).
    config.model.batchnorm_momentum = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 100  # used when steps == 0.
    config.train.steps = 0  # optimizer steps; overrides epochs when > 0.
    config.train.optimizer = "radam"  # radam | adam | adamw | sgd
    config.train.learning_rate = 1e-3  # peak learning rate.
    config.train.lr_schedule = "constant"  # constant | cosine (after warmup).
    config.train.warmup_steps = 0  # linear warmup from 0 to learning_rate.
    config.train.weight_decay = 0.0
    config.train.focal_weight = 1.0  # loss = Dice + focal_weight * Focal (the seed's 1).
    config.train.cross_entropy_weight = 0.0  # + this times cross-entropy (the seed's 0).
    # Multi-class loss weight of each class, class 0 first; () = equal (normalised to mean 1).
    config.train.class_weights = ()
    config.train.momentum = 0.9  # sgd only.
    # > 0: keep an exponential moving average of the weights (this decay a step);
    # validation, the best weights and the export use the average. 0: off.
    config.train.ema_decay = 0.0
    config.train.precision = "mixed_float16"  # float32 | mixed_float16 | mixed_bfloat16
    config.train.jit_compile = False  # XLA-compile the train step.
    config.train.steps_per_execution = 1  # train steps per tf.function call.
    config.train.eval_every = 0  # steps between evaluations; 0 = once per epoch.
    config.train.checkpoint_every = 0  # steps between checkpoints; 0 = at each evaluation.
    config.train.log_every = 50  # steps between train records in metrics.jsonl.
    config.train.keep_checkpoints = 3  # most recent checkpoints kept on disk.
    config.train.seed = 0  # model init, data order and augmentation.
    config.train.max_bad_steps = 50  # consecutive non-finite steps before stopping; 0 = never.

    config.log = ml_collections.ConfigDict()
    config.log.wandb = False  # log to Weights & Biases (offline unless logged in).
    config.log.wandb_project = "nail-segmentation"
    config.log.num_samples = 8  # validation images drawn in samples/step_N.png.
    return config
