"""Several classes in minutes on 2 CPU cores: nail plate vs. painted tip.

    python -m trainer.synthetic --output_dir=data/synthetic3 --num_classes=3
    python -m trainer.train --config=configs/demo_multiclass_cpu.py \
        --data_root=data/synthetic3 --workdir=runs/demo3

configs/demo_cpu.py with three softmax classes: 0 background, 1 the nail plate,
2 its tip. Masks are label-index PNGs (values 0, 1, 2); metrics.jsonl's `iou`
and `fscore` are the means over the two foreground classes, with each class's
own figures beside them (`iou/nail`, `iou/tip`, ...).
"""

from configs import demo_cpu


def get_config():
    """Returns the multi-class CPU demo configuration."""
    config = demo_cpu.get_config()
    config.model.num_classes = 3
    config.data.class_names = ("background", "nail", "tip")
    return config
