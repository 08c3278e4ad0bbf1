"""A folder of photos vs sharded TFRecord records: startup time and images/s, local and ram://.

    python -m benchmarks.records                       # 10,000 synthetic 256 px JPEG photos
    python -m benchmarks.records --photo_source=DIR    # a real data set's photos, copied
                                                       # under new names up to --num_photos
    python -m benchmarks.records --quick               # proves it runs; no figures

The same photos are read two ways, each from two storages:

  folder   the photos in the train/ + valid/ layout (`train/images/photo_00000.jpg`
           with `train/masks/photo_00000.png`), read through their manifests
           (`csv_file/`, already prepared): `trainer.train.read_data` reads them
           and checks that every listed file exists, then the pipeline opens one
           file per photo and one per mask.
  records  the same pairs written by `trainer.data.records.write_records`
           (`--num_shards`, 0: one shard per 1000 pairs, as `trainer.prepare`):
           `read_data` reads only the index, then the pipeline reads a few
           large files.

and each storage is

  local    the photo set's folder on this machine's disk (benchmarks/.data/); it
           was just written or read, so it is mostly read from the page cache
           (dropping that cache needs root): the figures are a warm disk's.
  ram      the same files copied into TensorFlow's in-memory filesystem
           (`ram://`, one per process) before the clock starts: a stand-in
           for a remote store with no disk latency, where every file open and
           existence check still goes through `tf.io.gfile`.

Measured per (storage, source), in a fresh process each (`benchmarks.runner`):

  startup s   from nothing to the first training batch: `read_data` (manifests
              or index present), `pipeline.make_dataset(..., training=True)`
              with `data.cache = "none"` and `data.augment = False` (so that
              reading and decoding is what is measured), and the first
              `next()`. TensorFlow's import is outside it, alike for both.
  images/s    over `--batches` batches after the first.

Preparing is timed once per storage and per run, outside startup, in a
process of its own: `prepare s` scans the folder, decodes every pair and
writes the manifests (`manifest.prepare`, which both sources need: the
records are written from the checked pairs, as `prepare --records` does);
`write records s` writes the shards and index. ram runs copy the local
manifests or records into ram:// (their paths are relative to their folder,
so the copies are what preparing in ram:// writes).

Variants run `--rounds` times, interleaved (local folder, local records, ram
folder, ram records, again); the table shows medians, and the ratios
records/folder of startup (below 1: records start sooner) and of images/s
(above 1: records read faster) per storage, as `RATIO` lines. No goal is set.
Results go to results/records.json.
"""

import concurrent.futures
import os
import shutil
import statistics
import time
from pathlib import Path

from trainer import cli
from trainer.data import synthetic

import cv2
import numpy as np
from absl import app, flags

from benchmarks import measure, report, runner

runner.define_common_flags()
flags.DEFINE_integer("num_photos", 10000, "Image/mask pairs in the set (train/ + valid/).")
flags.DEFINE_string(
    "photo_source",
    "synthetic",
    "'synthetic' (drawn nail photos, JPEG) or a data set folder DIR with DIR/train/images + "
    "DIR/train/masks (valid/ too, optional): its pairs are copied under new names, round "
    "after round, up to --num_photos.",
)
flags.DEFINE_integer("photo_px", 256, "Side of the synthetic photos on disk, px.")
flags.DEFINE_integer("image_px", 128, "Side of the training images (data.image_size), px.")
flags.DEFINE_integer("batch_size", 32, "Images per batch (data.batch_size).")
flags.DEFINE_integer("batches", 40, "Batches timed after the first.")
flags.DEFINE_integer("num_shards", 0, "Train shard files of the records; 0: one per 1000 pairs.")
flags.DEFINE_integer("rounds", 2, "Runs of each variant, interleaved; the table shows medians.")
FLAGS = flags.FLAGS

_QUICK = {
    "num_photos": 60,
    "photo_px": 64,
    "image_px": 32,
    "batch_size": 4,
    "batches": 3,
    "rounds": 1,
}
STORAGES = ("local", "ram")
SOURCES = ("folder", "records")
PREPARE = "prepare"  # the child that prepares both storages
VALID_FRACTION = 0.2  # of the photos, in valid/
RAM_ROOT = "ram://records_bench"
_PHOTOS, _RECORDS, _MANIFESTS = "photos", "records", "csv_file"
_DATA_COMPLETE = "COMPLETE"
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_JPEG_QUALITY = 90


# ---------------------------------------------------------------- the photo set (parent)


def photo_set() -> Path:
    """The set's folder, written on first use: `photos/` in the train/ + valid/ layout.

    Later runs with the same source and size reuse it; the manifests and the
    records next to it are written again by every run (`prepare_storages`).
    """
    if FLAGS.photo_source == "synthetic":
        name = f"records_synthetic_{FLAGS.photo_px}px_{FLAGS.num_photos}"
    else:
        name = f"records_{Path(FLAGS.photo_source).resolve().name}_{FLAGS.num_photos}"
    root = _data_dir() / name
    if (root / _DATA_COMPLETE).exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"  writing {FLAGS.num_photos} photos to {root} ...", flush=True)
    started = time.perf_counter()
    if FLAGS.photo_source == "synthetic":
        draw_photos(partial / _PHOTOS, FLAGS.num_photos, FLAGS.photo_px)
    else:
        copy_photos(Path(FLAGS.photo_source), partial / _PHOTOS, FLAGS.num_photos)
    (partial / _DATA_COMPLETE).write_text(f"{FLAGS.num_photos} pairs\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return root


def split_of(index: int, num_photos: int) -> str:
    """'train' for the first 80 % of the photos, 'valid' for the rest."""
    num_train = num_photos - max(1, round(VALID_FRACTION * num_photos))
    return "train" if index < num_train else "valid"


def draw_photos(folder: Path, num_photos: int, photo_px: int) -> None:
    """Draws synthetic nail photos (JPEG) and masks (PNG), one process per core."""
    for split in ("train", "valid"):
        for column in ("images", "masks"):
            (folder / split / column).mkdir(parents=True, exist_ok=True)
    workers = max(1, min(os.cpu_count() or 1, num_photos // 50))
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(_draw_some, folder, range(k, num_photos, workers), num_photos, photo_px)
            for k in range(workers)
        ]
        for job in jobs:
            job.result()


def _draw_some(folder: Path, indices: range, num_photos: int, photo_px: int) -> None:
    for index in indices:
        group = synthetic.GROUPS[index % len(synthetic.GROUPS)]
        image, mask = synthetic.render_example(np.random.default_rng([0, index]), group, photo_px)
        split = folder / split_of(index, num_photos)
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        quality = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
        cv2.imencode(".jpg", image, quality)[1].tofile(split / "images" / f"photo_{index:05d}.jpg")
        cv2.imencode(".png", mask)[1].tofile(split / "masks" / f"photo_{index:05d}.png")


def source_pairs(source: Path) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of SOURCE/{train,valid}/{images,masks}, paired by file stem.

    A mask shares its image's stem, or adds `_mask` to it, as `trainer.data.layout` pairs them.
    """
    pairs = []
    for split in ("train", "valid"):
        images_dir, masks_dir = source / split / "images", source / split / "masks"
        if not (images_dir.is_dir() and masks_dir.is_dir()):
            continue
        masks = {path.stem: path for path in sorted(masks_dir.iterdir()) if _is_image(path)}
        for image in sorted(images_dir.iterdir()):
            mask = masks.get(image.stem) or masks.get(image.stem + "_mask")
            if _is_image(image) and mask is not None:
                pairs.append((image, mask))
    if not pairs:
        raise app.UsageError(
            f"--photo_source={source}: no image/mask pairs in {source}/train/images + "
            f"{source}/train/masks; give 'synthetic' or a data set in the train/ + valid/ layout"
        )
    return pairs


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in _IMAGE_EXTENSIONS


def copy_photos(source: Path, folder: Path, num_photos: int) -> None:
    """Copies the source's pairs under new names (`photo_NNNNN`), cycling, up to `num_photos`."""
    pairs = source_pairs(source)
    for split in ("train", "valid"):
        for column in ("images", "masks"):
            (folder / split / column).mkdir(parents=True, exist_ok=True)
    for index in range(num_photos):
        image, mask = pairs[index % len(pairs)]
        split = folder / split_of(index, num_photos)
        name = f"photo_{index:05d}"
        shutil.copyfile(image, split / "images" / f"{name}{image.suffix.lower()}")
        shutil.copyfile(mask, split / "masks" / f"{name}{mask.suffix.lower()}")


def folder_mib(folder: Path) -> float:
    """Size of the files under `folder`, MiB."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def _data_dir() -> Path:
    return Path(FLAGS.data_dir).resolve() if FLAGS.data_dir else runner.DATA_DIR


# ---------------------------------------------------------------- the children


def run_child(variant: str) -> dict:
    """`prepare`: prepares both storages; `STORAGE/SOURCE`: measures reading one of them."""
    if variant == PREPARE:
        return prepare_storages(Path(FLAGS.data))
    storage, source = variant.split("/")
    return measure_reading(Path(FLAGS.data), storage, source)


def prepare_storages(root: Path) -> dict:
    """Prepares the manifests and writes the records, on local disk then in ram://; timed.

    The local ones stay in `root` (`photos/csv_file/`, `records/`) for the
    measuring children; the ram:// ones end with this process.
    """
    shutil.rmtree(root / _PHOTOS / _MANIFESTS, ignore_errors=True)
    shutil.rmtree(root / _RECORDS, ignore_errors=True)
    result = {f"local_{key}": value for key, value in _prepare(str(root)).items()}
    started = time.perf_counter()
    _copy_to_ram(root / _PHOTOS, f"{RAM_ROOT}/{_PHOTOS}", skip=_MANIFESTS)
    result["ram_copy_s"] = time.perf_counter() - started
    result.update({f"ram_{key}": value for key, value in _prepare(RAM_ROOT).items()})
    result["photos_mib"] = folder_mib(root / _PHOTOS / "train") + folder_mib(
        root / _PHOTOS / "valid"
    )
    result["records_mib"] = folder_mib(root / _RECORDS)
    return result


def _prepare(base: str) -> dict:
    """Prepares `base/photos`' manifests, writes `base/records`; returns the timings."""
    from trainer.data import manifest, records

    started = time.perf_counter()
    prepared = manifest.prepare(f"{base}/{_PHOTOS}", valid_fraction=VALID_FRACTION)
    prepare_s = time.perf_counter() - started
    num_shards = FLAGS.num_shards or records.shard_count_hint(len(prepared.train))
    started = time.perf_counter()
    index = records.write_records(
        prepared.train, prepared.valid, f"{base}/{_RECORDS}", num_shards=num_shards
    )
    return {
        "prepare_s": prepare_s,
        "write_records_s": time.perf_counter() - started,
        "num_train": len(prepared.train),
        "num_valid": len(prepared.valid),
        "num_skipped": prepared.num_skipped,
        "shards": {name: len(split["shards"]) for name, split in index["splits"].items()},
    }


def _copy_to_ram(folder: Path, url: str, *, skip: str | None = None) -> None:
    """Copies the files under `folder` to `url` with `tf.io.gfile` (less the sub-folder `skip`)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(url)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if skip is not None and relative.parts[0] == skip:
            continue
        target = f"{url}/{relative.as_posix()}"
        if path.is_dir():
            tf.io.gfile.makedirs(target)
        else:
            with tf.io.gfile.GFile(target, "wb") as file:
                file.write(path.read_bytes())


def data_root(root: Path, storage: str, source: str) -> tuple[str, float]:
    """The folder `read_data` is given, copied into ram:// first for `ram`; and the copy's s."""
    name = _PHOTOS if source == "folder" else _RECORDS
    if storage == "local":
        return str(root / name), 0.0
    started = time.perf_counter()
    _copy_to_ram(root / name, f"{RAM_ROOT}/{name}")
    return f"{RAM_ROOT}/{name}", time.perf_counter() - started


def reading_config():
    """configs/demo_cpu.py at `--image_px` and `--batch_size`, no cache, no augmentation."""
    from configs import demo_cpu

    config = demo_cpu.get_config()
    config.data.image_size = FLAGS.image_px
    config.data.batch_size = FLAGS.batch_size
    config.data.cache = "none"
    config.data.augment = False
    return config


def measure_reading(root: Path, storage: str, source: str) -> dict:
    """Times startup (to the first training batch) and images/s of one storage and source."""
    from trainer import train
    from trainer.data import pipeline

    config = reading_config()
    folder, copy_s = data_root(root, storage, source)
    rss_start_mib = measure.rss_mib()
    started = time.perf_counter()
    train_rows, _ = train.read_data(config, folder, FLAGS.scratch)
    read_data_s = time.perf_counter() - started
    dataset = pipeline.make_dataset(train_rows, config.data, training=True, seed=0)
    make_dataset_s = time.perf_counter() - started - read_data_s
    iterator = iter(dataset)
    first = next(iterator)
    startup_s = time.perf_counter() - started
    timing = measure.time_calls(
        lambda: int(next(iterator)[0].shape[0]), warmup_calls=0, timed_calls=FLAGS.batches
    )
    return {
        "storage": storage,
        "source": source,
        "num_train": len(train_rows),
        "ram_copy_s": copy_s if storage == "ram" else None,
        "read_data_s": read_data_s,
        "make_dataset_s": make_dataset_s,
        "startup_s": startup_s,
        "images_per_sec": timing["items_per_sec"],
        "timed_images": timing["items"],
        "cores_busy": timing["cores_busy"],
        "rss_start_mib": rss_start_mib,
        "batch_shape": list(first[0].shape),
    }


# ---------------------------------------------------------------- the parent


def median_row(runs: list[dict]) -> dict:
    """One row of a variant's runs: medians of startup s and images/s, every run's values kept."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[-1]
    row = dict(good[-1])
    for key in ("startup_s", "images_per_sec", "read_data_s"):
        values = [run[key] for run in good]
        row.update({key: statistics.median(values), f"{key}_runs": values})
    return row


def measure_variants(root: Path) -> list[dict]:
    """Runs every (storage, source) `--rounds` times, interleaved; one median row each."""
    variants = [f"{storage}/{source}" for storage in STORAGES for source in SOURCES]
    runs = {variant: [] for variant in variants}
    for _ in range(FLAGS.rounds):
        for variant in variants:
            runs[variant].append(
                runner.run_child("records", variant, _child_args(root), scratch=True)
            )
    return [median_row(runs[variant]) for variant in variants]


def _child_args(root: Path) -> dict:
    names = ("image_px", "batch_size", "batches", "num_shards")
    return {**{name: FLAGS[name].value for name in names}, "data": root}


def add_preparation(rows: list[dict], prepared: dict) -> None:
    """Puts each storage's prepare s (both sources) and write records s (records) in its rows."""
    for row in rows:
        storage, source = row["variant"].split("/")
        row.update(storage=storage, source=source)  # a failed run's row lacks them
        row["prepare_s"] = prepared.get(f"{storage}_prepare_s")
        if source == "records":
            row["write_records_s"] = prepared.get(f"{storage}_write_records_s")


def ratios(rows: list[dict]) -> dict[str, float | None]:
    """records/folder of startup s and of images/s per storage; also put in the records rows."""
    found = {}
    by_variant = {(row["storage"], row["source"]): row for row in rows}
    for storage in STORAGES:
        folder, records = by_variant[storage, "folder"], by_variant[storage, "records"]
        for key, label in (("startup_s", "startup s"), ("images_per_sec", "images/s")):
            value = report.ratio(records.get(key), folder.get(key))
            records[f"{key}_ratio"] = value
            found[f"records/folder {label}, {storage}"] = value
    return found


_COLUMNS = [
    report.Column("storage", "storage"),
    report.Column("source", "source"),
    report.Column("num_train", "train pairs"),
    report.Column("prepare_s", "prepare s", ".1f"),
    report.Column("write_records_s", "write records s", ".1f"),
    report.Column("read_data_s", "read_data s", ".2f"),
    report.Column("startup_s", "startup s", ".2f"),
    report.IMAGES_PER_SEC,
    report.CORES_BUSY,
    report.Column("startup_s_ratio", "startup x folder", ".2f"),
    report.Column("images_per_sec_ratio", "images/s x folder", ".2f"),
]


def run_parent() -> int:
    """Writes or reuses the photos, prepares both storages, measures the four variants."""
    settings = {
        name: FLAGS[name].value
        for name in (
            "num_photos",
            "photo_source",
            "image_px",
            "batch_size",
            "batches",
            "num_shards",
            "rounds",
        )
    }
    if FLAGS.photo_source == "synthetic":
        settings["photo_px"] = FLAGS.photo_px
    settings.update(config="configs/demo_cpu.py", cache="none", augment=False)
    record = report.start("records", "a folder of photos vs sharded TFRecords", settings)
    root = photo_set()
    prepared = runner.run_child("records", PREPARE, _child_args(root))
    record["prepared"] = prepared
    if "error" in prepared:  # without manifests, startup would include preparing them
        return report.finish(record, [prepared], _COLUMNS)
    rows = measure_variants(root)
    add_preparation(rows, prepared)
    notes = [
        f"photos {prepared['photos_mib']:.1f} MiB, records {prepared['records_mib']:.1f} MiB "
        f"in {prepared['local_shards']} shard files; copying the photos into ram:// took "
        f"{prepared['ram_copy_s']:.1f} s"
    ]
    return report.finish(record, rows, _COLUMNS, ratios=ratios(rows), notes=notes)


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
