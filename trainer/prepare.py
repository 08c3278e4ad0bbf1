"""Scans a data folder and writes its manifests, optionally checking every file.

  python -m trainer.prepare --data_root=DIR [--valid_fraction=0.2 --seed=0 --check --strict]

writes `DIR/csv_file/train.csv` and `valid.csv` (see `trainer.data.manifest`),
logs the pairs per split and group and lists the files that could not be
paired. `--check` decodes every image and mask and lists those that fail, masks
of another size than their image, and (as notes) empty or full masks.
`--strict` exits with status 1 when any problem of severity 'error' was found.
"""

import collections
import sys

import pandas as pd
from absl import app, flags, logging

from trainer.data import manifest
from trainer.errors import UserError

_DATA_ROOT = flags.DEFINE_string("data_root", None, "The data set folder.")
_VALID_FRACTION = flags.DEFINE_float(
    "valid_fraction", 0.2, "Share of each group held out for validation (Images/ layout)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train/valid split.")
_CHECK = flags.DEFINE_bool("check", False, "Decode every image and mask and report problems.")
_STRICT = flags.DEFINE_bool("strict", False, "Exit with status 1 if any error was found.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        result = manifest.prepare(
            _DATA_ROOT.value, valid_fraction=_VALID_FRACTION.value, seed=_SEED.value
        )
    except UserError as error:
        logging.error("error: %s", error)
        sys.exit(2)
    logging.info("wrote the manifests to %s", result.csv_dir)
    for split, frame in (("train", result.train), ("valid", result.valid)):
        per_group = dict(sorted(collections.Counter(frame["group"]).items()))
        logging.info("%s: %d pairs, per group %s", split, len(frame), per_group)
    problems = list(result.problems)
    _log_problems("scan", result.problems)
    if _CHECK.value:
        checked = manifest.check_pairs(pd.concat([result.train, result.valid]))
        _log_problems("check", checked)
        problems += checked
    num_errors = sum(problem.severity == "error" for problem in problems)
    if _STRICT.value and num_errors:
        logging.error("error: %d file(s) with errors (listed above); --strict fails", num_errors)
        sys.exit(1)


def _log_problems(stage: str, problems: list[manifest.Problem]) -> None:
    counts = collections.Counter(problem.severity for problem in problems)
    logging.info("%s: %d problem(s) %s", stage, len(problems), dict(sorted(counts.items())))
    for problem in problems:
        log = logging.info if problem.severity == "note" else logging.warning
        log("%s", problem)


if __name__ == "__main__":
    flags.mark_flag_as_required("data_root")
    app.run(main)
