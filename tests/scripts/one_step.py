"""One training step on N logical CPU replicas; saves the updated weights (test helper).

python tests/scripts/one_step.py NUM_REPLICAS OUTPUT.npz [NUM_CLASSES]

With NUM_CLASSES >= 2 the masks are random labels 0..K-1 with ignored pixels
(255) and unequal class weights, so that the categorical loss, its ignore label
and its weights are all part of what must not depend on the replica count.
"""

import sys

import trainer  # noqa: F401
from trainer import distribute, loop
from trainer.plan import run_plan

import numpy as np
import tensorflow as tf

from configs import demo_cpu

GLOBAL_BATCH = 8
SIZE_PX = 64


def main(num_replicas: int, output: str, num_classes: int = 1) -> None:
    distribute.configure_cpu_devices(num_replicas)
    strategy = distribute.make_strategy("mirrored" if num_replicas > 1 else "one_device")
    config = demo_cpu.get_config()
    config.model.decoder_filters = (32, 16, 16, 8, 8)
    config.model.sync_batchnorm = True  # same layers on 1 and N replicas
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.1
    config.train.warmup_steps = 0
    config.data.image_size = SIZE_PX
    config.data.batch_size = GLOBAL_BATCH
    config.train.steps = 10
    config.model.num_classes = num_classes
    if num_classes > 1:
        config.train.class_weights = tuple(float(k + 1) for k in range(num_classes))
    plan = run_plan(config, 10 * GLOBAL_BATCH, num_replicas)
    trainee = loop.build_trainee(config, strategy, plan)
    rng = np.random.default_rng(1)
    images = rng.random((GLOBAL_BATCH, SIZE_PX, SIZE_PX, 3), dtype=np.float32)
    masks = (rng.random((GLOBAL_BATCH, SIZE_PX, SIZE_PX, 1)) > 0.7).astype(np.float32)
    if num_classes > 1:
        labels = rng.integers(0, num_classes, (GLOBAL_BATCH, SIZE_PX, SIZE_PX, 1))
        ignored = rng.random(labels.shape) < 0.1
        masks = np.where(ignored, 255, labels).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors((images, masks)).repeat().unbatch()
    dataset = dataset.batch(GLOBAL_BATCH // num_replicas)

    def dataset_fn(_):
        return dataset

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    logs = trainee.train_fn(iterator, tf.constant(1))
    counts = np.stack([logs[k].numpy() for k in ("tp", "fp", "fn")])
    weights = [w.numpy() for w in trainee.model.weights]
    np.savez(output, *weights, loss=float(logs["loss"]), counts=counts)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *(int(a) for a in sys.argv[3:]))
