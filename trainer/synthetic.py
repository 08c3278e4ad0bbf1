"""Writes the synthetic nail data set in the seed's layout.

  python -m trainer.synthetic --output_dir=/tmp/nails [--num_images=400 --image_size=256 --seed=0]
  python -m trainer.synthetic --output_dir=/tmp/nails3 --num_classes=3

writes `Images/<group>/nail_NNNNN.png` and `Masks/<group>/nail_NNNNN.png` for
groups 1..4 (see `trainer.data.synthetic`). The same flags give the same bytes.
`--num_classes=3` writes label-index masks: 0 background, 1 nail, 2 the nail's
tip band, drawn into the image; any value but 1 or 3 exits 2.
"""

from trainer import cli
from trainer.data import synthetic

from absl import app, flags, logging

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder to write the data set into.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 400, "Number of image/mask pairs.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "Side of the square images, in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; the same seed writes the same bytes.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", 1, "1: 0/255 nail masks; 3: label indices 0 background, 1 nail, 2 tip band."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    written = synthetic.write_dataset(
        _OUTPUT_DIR.value,
        num_images=_NUM_IMAGES.value,
        image_size=_IMAGE_SIZE.value,
        seed=_SEED.value,
        num_classes=_NUM_CLASSES.value,
    )
    counts = synthetic.group_counts(_NUM_IMAGES.value)
    logging.info("wrote %d pairs to %s, per group %s", written, _OUTPUT_DIR.value, counts)


if __name__ == "__main__":
    flags.mark_flag_as_required("output_dir")
    cli.run(main)
