"""The seed's tf.data pipeline against ours: time to first batch, images/s, peak memory.

    python -m benchmarks.input_pipeline                  # 200 and 2000 photos of 768 px
    python -m benchmarks.input_pipeline --sizes=200,2000 --photo_px=768 --image_px=384
    python -m benchmarks.input_pipeline --quick          # proves it runs; no figures
    python -m benchmarks.input_pipeline --real_root=DATA # real photos (DATA/train), at their
                                                         # own size and upscaled to a phone's

With `--real_root`, the pipelines read the first `--real_count` photos of a
real data set's train/ split instead of synthetic ones, twice: as they are,
and upscaled to `--phone_px` (a 12 MP phone photo by default) and saved as
JPEG, where decoding at a reduced DCT scale (trainer/data/decode.py) matters.

Both pipelines read the same synthetic photos (written once to benchmarks/.data/)
and deliver training batches of the same size at the same image size:

  seed  the tutorial's `tf_dataset`, faithfully: decode (tf.io.decode_image) in a
        map with cpu_count // num_devices calls, shuffle(buffer_size=100000) of
        the DECODED photos, then its albumentations chain at full photo size
        followed by Resize (2.x names: the trainer's chain plus A.Resize) in a
        tf.numpy_function map, prefetch, batch. `.repeat()` stands for Keras'
        fit starting a new pass (and refilling the buffer) every epoch.
  ours  `trainer.data.pipeline.make_dataset(frame, data_config, training=True)`,
        decoding every photo each epoch (`data.cache = "none"`).
  ours+cache  the same with `data.cache = "disk"` (the configs' default): each
        pair decoded and resized once into a fresh cache folder, read raw
        after. Building it is timed on its own ("cache build s", part of the
        first batch's time); a later run on the same data reuses the files.

The seed decodes a whole epoch before its first batch; its warm-up is its
first epoch, and the timed window (the same for both) covers whole epochs of
it, each paying its buffer refill as in training: images/s is then the rate a
training run sees. Each pipeline runs in its own process, so that its peak
resident memory is its own. Goals: ours >= 1.5x the seed's images/s at 384 px
on 2 cores (on real JPEGs: >= 2x without the cache too); our peak memory flat
in the data set size (the seed's grows with it: its buffer holds every decoded
photo). Results go to results/input_pipeline.json (input_pipeline_real.json
with --real_root).

TensorFlow is imported inside the child's functions only: the parent process,
which runs no variant, stays free of it.
"""

import multiprocessing
import time

from trainer import cli
from trainer.data import augment

import albumentations as A
from absl import flags

from benchmarks import measure, report, runner
from configs import nail_unet_effb4

runner.define_common_flags()
flags.DEFINE_list("sizes", ["200", "2000"], "Data set sizes (number of photos) to compare.")
flags.DEFINE_integer("photo_px", 768, "Side of the synthetic photos on disk, px.")
flags.DEFINE_integer("image_px", 384, "Side of the training images both pipelines deliver, px.")
flags.DEFINE_integer("batch_size", 32, "Images per batch (the seed's global batch).")
flags.DEFINE_integer(
    "warmup_batches", 3, "Our batches read before timing, the first included (the seed: 1 epoch)."
)
flags.DEFINE_integer(
    "batches", 30, "Batches timed at least; rounded up to whole epochs of the seed's pipeline."
)
flags.DEFINE_integer("num_devices", 1, "The seed's len(device): its maps use cpu_count // this.")
flags.DEFINE_string(
    "real_root",
    None,
    "A data set in the trainer's layout: benchmark on the photos of its train/ split, at "
    "their own size and upscaled to --phone_px, instead of synthetic ones.",
)
flags.DEFINE_integer("real_count", 100, "Photos of --real_root's train/ split to read.")
flags.DEFINE_string("phone_px", "4032x3024", "WIDTHxHEIGHT of the upscaled real photos.")
FLAGS = flags.FLAGS

VARIANTS = ("seed", "ours", "ours+cache")
# Growth of our peak memory from the smallest to the largest set still called flat.
_FLAT_FRACTION = 0.10
_QUICK = {
    "sizes": ["16", "48"],
    "photo_px": 192,
    "image_px": 96,
    "batch_size": 4,
    "warmup_batches": 1,
    "batches": 4,
}


def seed_dataset(images, masks, *, image_px, batch_size, num_devices):
    """The seed tutorial's `tf_dataset(shuffle=True)` with its training transforms."""
    import tensorflow as tf

    transforms = A.Compose(
        [*augment.make_train_transform().transforms, A.Resize(image_px, image_px)], p=1
    )
    dtype = tf.float32
    num_parallel_calls = multiprocessing.cpu_count() // num_devices

    def load_image_and_mask_from_path(image_path, mask_path):
        img = tf.image.decode_image(tf.io.read_file(image_path), channels=3)
        mask = tf.image.decode_image(tf.io.read_file(mask_path), channels=1)
        return img, mask

    def aug_fn(image, mask):
        aug_data = transforms(image=image, mask=mask)
        aug_img = tf.cast(aug_data["image"] / 255.0, dtype)
        aug_mask = tf.cast(aug_data["mask"] / 255.0, dtype)
        return aug_img, aug_mask

    def process_data(image, mask):
        return tf.numpy_function(aug_fn, [image, mask], [dtype, dtype])

    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    dataset = dataset.map(load_image_and_mask_from_path, num_parallel_calls=num_parallel_calls)
    dataset = dataset.shuffle(buffer_size=100000)
    dataset = dataset.map(process_data, num_parallel_calls=num_parallel_calls)
    dataset = dataset.prefetch(tf.data.AUTOTUNE).batch(batch_size)
    # Keras' fit iterates the finite data set anew each epoch; so does repeat().
    return dataset.repeat()


def our_dataset(frame, *, image_px, batch_size, cache_dir=None):
    """The trainer's training pipeline, with the seed config's data settings.

    With a `cache_dir`, every pair is first decoded and resized into it once
    (`harness.cache_pairs`), as trainer/train.py does before training.
    """
    from trainer.data import pipeline

    from benchmarks import harness

    data_config = nail_unet_effb4.get_config().data
    data_config.image_size = image_px
    data_config.batch_size = batch_size
    if cache_dir is not None:
        frame = harness.cache_pairs(frame, data_config, cache_dir)
    return pipeline.make_dataset(frame, data_config, training=True)


def batch_counts(variant: str, num_images: int) -> tuple[int, int]:
    """Batches to read before timing and batches to time.

    The seed's pipeline decodes a whole epoch into its shuffle buffer before
    its first batch, so a window inside one epoch would leave decoding out:
    the seed warms up for exactly its first epoch, and the window covers whole
    epochs of it (each paying its refill, as in training). Ours gets the same
    window.
    """
    batches_per_epoch = -(-num_images // FLAGS.batch_size)  # the seed keeps the partial batch
    timed_batches = -(-FLAGS.batches // batches_per_epoch) * batches_per_epoch
    warmup_batches = batches_per_epoch if variant == "seed" else FLAGS.warmup_batches
    return max(1, warmup_batches), timed_batches


def run_child(variant: str) -> dict:
    """Builds one pipeline and reads from it; returns its timings and memory."""
    from benchmarks import harness

    frame = harness.data_frame(FLAGS.data)
    rss_start_mib = measure.rss_mib()
    started = time.perf_counter()
    cache_dir = FLAGS.scratch if variant == "ours+cache" else None
    if variant == "seed":
        dataset = seed_dataset(
            list(frame["images"]),
            list(frame["masks"]),
            image_px=FLAGS.image_px,
            batch_size=FLAGS.batch_size,
            num_devices=FLAGS.num_devices,
        )
    else:
        dataset = our_dataset(
            frame, image_px=FLAGS.image_px, batch_size=FLAGS.batch_size, cache_dir=cache_dir
        )
    build_s = time.perf_counter() - started
    warmup_batches, timed_batches = batch_counts(variant, len(frame))
    iterator = iter(dataset)
    first = next(iterator)
    first_batch_s = time.perf_counter() - started
    image_shape = list(first[0].shape)
    timing = measure.time_calls(
        lambda: int(next(iterator)[0].shape[0]),
        warmup_calls=warmup_batches - 1,
        timed_calls=timed_batches,
    )
    return {
        "num_images": len(frame),
        "warmup_batches": warmup_batches,
        "timed_batches": timed_batches,
        "first_batch_s": first_batch_s,
        "cache_build_s": build_s if cache_dir else None,
        "images_per_sec": timing["items_per_sec"],
        "timed_images": timing["items"],
        "cores_busy": timing["cores_busy"],
        "rss_start_mib": rss_start_mib,
        "batch_shape": image_shape,
    }


def data_sets() -> list[dict]:
    """The data sets to read: `{name, folder, size, real}` each (synthetic, or --real_root's)."""
    if FLAGS.real_root:
        width, height = (int(side) for side in FLAGS.phone_px.lower().split("x"))
        sets = runner.real_photo_sets(FLAGS.real_root, FLAGS.real_count, (width, height))
        return [
            {"name": name, "folder": folder, "size": FLAGS.real_count, "real": True}
            for name, folder in sets.items()
        ]
    sizes = sorted(int(size) for size in FLAGS.sizes)
    return [
        {
            "name": f"synthetic {FLAGS.photo_px} px",
            "folder": runner.synthetic_data(size, FLAGS.photo_px),
            "size": size,
            "real": False,
        }
        for size in sizes
    ]


def run_parent() -> int:
    """Runs the three pipelines on each data set, each in its own process; judges them."""
    settings = {
        name: FLAGS[name].value
        for name in ("photo_px", "image_px", "batch_size", "warmup_batches", "batches")
    }
    settings.update(num_devices=FLAGS.num_devices)
    if FLAGS.real_root:
        settings.update(real_count=FLAGS.real_count, phone_px=FLAGS.phone_px)
        del settings["photo_px"]
    else:
        settings.update(sizes=sorted(int(size) for size in FLAGS.sizes))
    name = "input_pipeline_real" if FLAGS.real_root else "input_pipeline"
    record = report.start(name, "the seed's tf.data pipeline vs ours", settings)
    sets = data_sets()
    rows = []
    for data_set in sets:
        for variant in VARIANTS:
            args = {
                name: FLAGS[name].value
                for name in ("image_px", "batch_size", "warmup_batches", "batches", "num_devices")
            }
            args["data"] = data_set["folder"]
            result = runner.run_child("input_pipeline", variant, args, scratch=True)
            rows.append({**result, "data_set": data_set["name"], "size": data_set["size"]})
    goals, notes = _judge(rows, sets)
    return report.finish(record, rows, _COLUMNS, goals=goals, notes=notes)


_COLUMNS = [
    report.Column("data_set", "photos"),
    report.Column("size", "count"),
    report.Column("variant", "pipeline"),
    report.Column("first_batch_s", "first batch s", ".2f"),
    report.Column("cache_build_s", "cache build s", ".2f"),
    report.Column("timed_images", "timed images"),
    report.IMAGES_PER_SEC,
    report.CORES_BUSY,
    report.Column("rss_start_mib", "RSS start MiB", ".0f"),
    report.PEAK_RSS_MIB,
]


def _judge(rows: list[dict], sets: list[dict]):
    def value(data_set, variant, key):
        for row in rows:
            if (row["data_set"], row["size"], row["variant"]) == (
                data_set["name"],
                data_set["size"],
                variant,
            ):
                return row.get(key)
        return None

    goals, notes = [], []
    for data_set in sets:
        label = f"{data_set['name']}, {data_set['size']} photos"
        seed_rate = value(data_set, "seed", "images_per_sec")
        speedup = report.ratio(value(data_set, "ours+cache", "images_per_sec"), seed_rate)
        goals.append(
            report.goal(f"ours (cache on, the default)/seed images/s, {label}", speedup, 1.5)
        )
        uncached = report.ratio(value(data_set, "ours", "images_per_sec"), seed_rate)
        if data_set["real"]:
            goals.append(
                report.goal(f"ours without the cache/seed images/s, {label}", uncached, 2.0)
            )
        elif uncached is not None:
            notes.append(f"{label}: ours without the cache {uncached:.2f}x the seed")
        first = report.ratio(
            value(data_set, "seed", "first_batch_s"), value(data_set, "ours+cache", "first_batch_s")
        )
        if first is not None:
            notes.append(
                f"{label}: the seed's first batch takes {first:.1f}x ours with a fresh cache"
            )
    if any(data_set["real"] for data_set in sets) or len(sets) < 2:
        return goals, notes
    small, large = sets[0], sets[-1]
    for variant in VARIANTS:
        before = value(small, variant, "peak_rss_mib")
        after = value(large, variant, "peak_rss_mib")
        if before and after:
            notes.append(
                f"{variant}: peak RSS {before:.0f} MiB at {small['size']} photos, {after:.0f} MiB "
                f"at {large['size']} ({after - before:+.0f} MiB)"
            )
    for variant in ("ours", "ours+cache"):
        growth = report.ratio(
            value(large, variant, "peak_rss_mib"), value(small, variant, "peak_rss_mib")
        )
        growth = None if growth is None else growth - 1
        goals.append(
            report.goal(
                f"growth of {variant} peak RSS, {small['size']} -> {large['size']} photos",
                growth,
                _FLAT_FRACTION,
                at_most=True,
            )
        )
    return goals, notes


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
