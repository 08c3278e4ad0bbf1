"""Scans a data folder, checks every pair and writes its manifests.

  python -m trainer.prepare --data_root=DIR [--valid_fraction=0.2 --seed=0 --check --strict]
      [--num_classes=1 --ignore_label=255] [--records=OUT --num_shards=N]

DIR may be a TensorFlow filesystem URL (`gs://BUCKET/PATH`): every file is
listed, read and written through `tf.io.gfile`.

writes `DIR/csv_file/train.csv` and `valid.csv` (see `trainer.data.manifest`)
exactly as the trainer would when it finds none: every image and mask is
decoded with the trainer's own decoders, the pairs it cannot read are left out,
and every problem goes to `DIR/csv_file/problems.csv` (path, severity, message).
Logs the pairs per split and group, and a count of the problems.

`--records=OUT` also writes the checked pairs as sharded TFRecord files and an
index (`trainer.data.records`): `--data_root=OUT` then trains from them, for
data sets too large for one file per photo, or on buckets. `--num_shards`
sets the train split's files (default: one per 1000 pairs).

The masks are checked for the classes the run will train: give the same
`--num_classes` and `--ignore_label` as `--config.model.num_classes` and
`--config.data.ignore_label`. 1 (the default) checks binary masks (0/255, or
0/1); label-index masks (values 0..K-1) checked that way are errors, since the
binary trainer would binarise their classes away. K >= 2 checks label-index
masks: a value that is neither a class nor the ignore label is an error, and a
0/255 mask (all its foreground ignored) a warning.

`--check` also lists every problem, one line each: `severity: path: message`.
Errors are files the trainer cannot use (a corrupt or unsupported file, an image
without a mask or a mask without an image, a mask whose proportions differ from
its image's, a mask of the other kind of classes); warnings are usable but
likely mistakes (a mask at another scale, a mostly gray mask); notes are
legitimate (empty or full masks, JPEG noise). `--strict` exits with status 1
when any error was found (the manifests are written all the same). A data root
that is missing, empty, in neither layout or without any usable pair, or a bad
`--num_classes` or `--ignore_label`, exits with status 2 and one line saying why.
"""

import collections
import sys

from trainer import cli
from trainer.data import layout, manifest, records
from trainer.errors import UserError

from absl import app, flags, logging

_DATA_ROOT = flags.DEFINE_string(
    "data_root", None, "The data set folder: a local path or a URL such as gs://BUCKET/PATH."
)
_VALID_FRACTION = flags.DEFINE_float(
    "valid_fraction", 0.2, "Share of each group held out for validation (Images/ layout)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train/valid split.")
_CHECK = flags.DEFINE_bool("check", False, "List every problem found, one line each.")
_STRICT = flags.DEFINE_bool("strict", False, "Exit with status 1 if any error was found.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes",
    1,
    "The model's classes, as --config.model.num_classes: 1 for binary masks (0/255 or 0/1), "
    "K >= 2 for label-index masks with values 0..K-1.",
)
_IGNORE_LABEL = flags.DEFINE_integer(
    "ignore_label",
    255,
    "Label-index masks only, as --config.data.ignore_label: the value no loss counts.",
)


_RECORDS = flags.DEFINE_string(
    "records",
    None,
    "Also write the checked pairs as sharded TFRecord files and an index to this folder "
    "(local or a URL); train with --data_root pointing at it.",
)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0, "TFRecord files of the train split with --records; 0: one per 1000 pairs."
)


def _class_flags_error(num_classes: int, ignore_label: int) -> str | None:
    """What is wrong with `--num_classes` and `--ignore_label`, in one line; None when fine.

    The same rules as the trainer's config check (`trainer.config_check`), in
    this command's flags.
    """
    if num_classes < 1:
        return (
            f"--num_classes={num_classes}: give 1 for binary masks (0/255 or 0/1), or the "
            "number of classes K >= 2 of label-index masks (values 0..K-1)"
        )
    if not 0 <= ignore_label <= 255:
        return (
            f"--ignore_label={ignore_label}: masks hold 8-bit values; give one in 0..255, e.g. 255"
        )
    if num_classes > 1 and ignore_label < num_classes:
        return (
            f"--ignore_label={ignore_label} is one of the classes 0..{num_classes - 1} of "
            f"--num_classes={num_classes}; give a value above them, e.g. 255"
        )
    return None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    num_classes, ignore_label = _NUM_CLASSES.value, _IGNORE_LABEL.value
    bad_flags = _class_flags_error(num_classes, ignore_label)
    if bad_flags:
        raise UserError(bad_flags)
    if _NUM_SHARDS.value < 0 or (_NUM_SHARDS.value and not _RECORDS.value):
        raise UserError(
            f"--num_shards={_NUM_SHARDS.value}: give a number of files >= 1 together with "
            "--records=OUT (0 picks one file per 1000 pairs)"
        )
    if num_classes > 1:
        logging.info(
            "checking label-index masks of %d classes, ignore label %d", num_classes, ignore_label
        )
    if records.is_records_root(_DATA_ROOT.value):
        raise records.not_a_folder_of_photos(_DATA_ROOT.value, "prepare")
    result = manifest.prepare(
        _DATA_ROOT.value,
        valid_fraction=_VALID_FRACTION.value,
        seed=_SEED.value,
        log_problems=_CHECK.value,
        num_classes=num_classes,
        ignore_label=ignore_label,
    )
    logging.info("wrote the manifests to %s", result.csv_dir)
    for split, frame in (("train", result.train), ("valid", result.valid)):
        per_group = dict(sorted(collections.Counter(frame["group"]).items()))
        logging.info("%s: %d pairs, per group %s", split, len(frame), per_group)
    counts = collections.Counter(problem.severity for problem in result.problems)
    hint = "" if _CHECK.value or not result.problems else "; --check lists them"
    logging.info("%d problem(s) %s%s", len(result.problems), dict(sorted(counts.items())), hint)
    if result.num_skipped:
        logging.warning(manifest.SKIPPED_MESSAGE, result.num_skipped, result.problems_csv)
    if _RECORDS.value:
        num_shards = _NUM_SHARDS.value or records.shard_count_hint(len(result.train))
        index = records.write_records(
            result.train,
            result.valid,
            _RECORDS.value,
            num_shards=num_shards,
            seed=_SEED.value,
            num_classes=num_classes,
            ignore_label=ignore_label,
            source=str(layout.absolute(_DATA_ROOT.value)),
        )
        shards = {name: len(split["shards"]) for name, split in index["splits"].items()}
        logging.info("wrote the records to %s: shard files per split %s", _RECORDS.value, shards)
    if _STRICT.value and counts["error"]:
        logging.error("error: %d file(s) with errors; --strict fails", counts["error"])
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flag_as_required("data_root")
    cli.run(main)
