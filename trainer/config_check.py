"""Checks every field of a run's config before any work starts.

`validate(config)` finds the first problem and raises `UserError` with one
line, `--config.GROUP.FIELD=VALUE: what is wrong; the fix`: a field the table
does not know (with the nearest real one), a field missing, a wrong type, a
value out of range or not among the choices, then the rules that tie fields
together (image size and architecture, warmup and run length, ...).

Adding a config field is one line in `FIELDS`: its dotted path and a check
made by one of the factories below (`whole`, `number`, `boolean`, `choice`,
`text`, `whole_tuple`, ...), or any function `value -> problem | None`.
"""

import difflib
import os
from collections.abc import Callable
from typing import Any

from trainer import config_fields, optim
from trainer import model as model_lib
from trainer.data import cache, decode
from trainer.errors import UserError

import ml_collections

# A field's check: None when the value is fine, else "what is wrong; the fix".
Check = Callable[[Any], str | None]


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _outside(value, minimum, maximum) -> str | None:
    """The problem of `value` against inclusive bounds (each optional), or None."""
    if minimum is not None and value < minimum:
        return f"must be at least {minimum}; give {minimum} or more"
    if maximum is not None and value > maximum:
        return f"must be at most {maximum}; give {maximum} or less"
    return None


def whole(*, minimum: int | None = None, maximum: int | None = None) -> Check:
    """A whole number within `minimum..maximum` (each bound optional, inclusive)."""

    def check(value):
        if not _is_whole(value):
            return "not a whole number; give one, e.g. 1"
        return _outside(value, minimum, maximum)

    return check


def number(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Check:
    """A number; `minimum`/`maximum` are inclusive bounds, `above`/`below` exclusive ones."""

    def check(value):
        if not _is_number(value):
            return "not a number; give one, e.g. 0.1"
        if above is not None and below is not None and not above < value < below:
            return f"must lie strictly between {above} and {below}; give a value in between"
        if above is not None and value <= above:
            return f"must be above {above}; give a larger value"
        if below is not None and value >= below:
            return f"must be below {below}; give a smaller value"
        return _outside(value, minimum, maximum)

    return check


def boolean(*, optional: bool = False) -> Check:
    """True or False; with `optional`, None too (meaning: decided at run time)."""

    def check(value):
        if isinstance(value, bool) or (optional and value is None):
            return None
        unset = " (or leave it unset)" if optional else ""
        return f"not True or False; give true or false{unset}"

    return check


def choice(choices, *, ignore_case: bool = False) -> Check:
    """One of `choices` (strings), compared without case when `ignore_case`."""
    choices = tuple(choices)

    def check(value):
        if isinstance(value, str) and (value.lower() if ignore_case else value) in choices:
            return None
        nearest = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"did you mean {nearest[0]}? " if nearest else ""
        return f"unknown value; {hint}choose one of {', '.join(choices)}"

    return check


def text(*, empty: bool = True) -> Check:
    """A string; with `empty=False`, one with some non-blank character."""

    def check(value):
        if not isinstance(value, str):
            return "not a string; give a text value"
        if not empty and not value.strip():
            return "is empty; give a name"
        return None

    return check


def whole_tuple(*, length: int, minimum: int) -> Check:
    """A tuple (or list) of `length` whole numbers, each at least `minimum`."""

    def check(value):
        if (
            not isinstance(value, (tuple, list))
            or len(value) != length
            or not all(_is_whole(v) and v >= minimum for v in value)
        ):
            example = ",".join(str(2 ** (length + 3 - i)) for i in range(length))
            return (
                f"needs {length} whole numbers of at least {minimum}, deepest first; "
                f"give e.g. {example}"
            )
        return None

    return check


def tuple_of(item: Check, *, example: str) -> Check:
    """A tuple (or list) whose items each pass `item`; may be empty."""

    def check(value):
        if not isinstance(value, (tuple, list)):
            return f"not a tuple; give e.g. {example}"
        for position, entry in enumerate(value):
            problem = item(entry)
            if problem:
                what = problem.split(";")[0]
                return f"entry {position} ({_shown(entry)}): {what}; give e.g. {example}"
        return None

    return check


def encoder_weights(value) -> str | None:
    """'imagenet', 'none' (or None, '') or the path of an existing local weights file."""
    if value is not None and not isinstance(value, str):
        return "not a string; give 'imagenet', 'none' or the path of a local .h5 file"
    if model_lib.encoder_weights_kind(value) == "file" and not os.path.isfile(value):
        return "no such file; give a local .h5 weights file, 'imagenet' (downloads) or 'none'"
    return None


# Every field of a config, in the order it is checked. Fields added by later
# configs get one line here; validate() rejects fields missing from this table.
FIELDS: dict[str, Check] = {
    "data.image_size": whole(minimum=1),
    "data.resize": choice(decode.RESIZE_MODES),
    "data.crop_scale": number(minimum=1),
    "data.batch_size": whole(minimum=1),
    "data.balanced": boolean(),
    "data.augment": boolean(),
    "data.vertical_flip": boolean(),
    "data.augment_strength": number(above=0, maximum=2),
    "data.valid_fraction": number(above=0, below=1),
    "data.num_parallel_calls": whole(minimum=0),
    "data.prefetch_batches": whole(minimum=0),
    "data.cache": choice(cache.MODES),
    "data.cache_dir": text(),
    "data.shuffle_buffer": whole(minimum=1),
    "data.ignore_label": whole(minimum=0, maximum=255),
    "data.class_names": tuple_of(text(empty=False), example="('background','plate','tip')"),
    "model.arch": choice(model_lib.ARCHITECTURES, ignore_case=True),
    "model.num_classes": whole(minimum=1),
    "model.backbone": choice(model_lib.BACKBONES),
    "model.encoder_weights": encoder_weights,
    "model.encoder_freeze": boolean(),
    "model.decoder_filters": whole_tuple(length=5, minimum=1),
    "model.sync_batchnorm": boolean(optional=True),
    "model.batchnorm_momentum": number(minimum=0, below=1),
    "train.epochs": whole(minimum=0),
    "train.steps": whole(minimum=0),
    "train.optimizer": choice(optim.OPTIMIZERS),
    "train.learning_rate": number(above=0),
    "train.lr_schedule": choice(optim.LR_SCHEDULES),
    "train.warmup_steps": whole(minimum=0),
    "train.weight_decay": number(minimum=0),
    "train.focal_weight": number(minimum=0),
    "train.cross_entropy_weight": number(minimum=0),
    "train.class_weights": tuple_of(number(above=0), example="(1.0,2.0,4.0)"),
    "train.momentum": number(minimum=0, maximum=1),
    "train.ema_decay": number(minimum=0, below=1),
    "train.precision": choice(optim.PRECISIONS),
    "train.jit_compile": boolean(),
    "train.steps_per_execution": whole(minimum=1),
    "train.eval_every": whole(minimum=0),
    "train.checkpoint_every": whole(minimum=0),
    "train.log_every": whole(minimum=0),
    "train.keep_checkpoints": whole(minimum=1),
    # numpy seeds the data order: 0 .. 2**32 - 1.
    "train.seed": whole(minimum=0, maximum=2**32 - 1),
    "train.max_bad_steps": whole(minimum=0),
    "log.wandb": boolean(),
    "log.wandb_project": text(),
    "log.num_samples": whole(minimum=0),
}


def _image_size_suits_arch(config) -> tuple[str, str] | None:
    arch = config.model.arch.lower()
    multiple = model_lib.SIZE_MULTIPLE[arch]
    size = config.data.image_size
    if size % multiple == 0:
        return None
    lower = max(multiple, size // multiple * multiple)
    return (
        "data.image_size",
        f"does not suit {arch}, which needs a multiple of {multiple}; "
        f"use {lower} or {lower + multiple}",
    )


def _something_to_train(config) -> tuple[str, str] | None:
    if config.train.steps or config.train.epochs:
        return None
    return (
        "train.steps",
        "nothing to train, --config.train.epochs=0 too; set either to a positive number",
    )


def _warmup_within_run(config) -> tuple[str, str] | None:
    # With epochs only, the run's length is known once the data is counted (optim checks then).
    steps = config.train.steps
    if not steps or config.train.warmup_steps <= steps:
        return None
    return (
        "train.warmup_steps",
        f"is longer than the run (--config.train.steps={steps}); shorten the warmup",
    )


def _one_per_class(field: str):
    """A rule: the tuple at `field` is empty or has one entry per class."""

    def rule(config) -> tuple[str, str] | None:
        group, name = field.split(".")
        entries, count = len(config[group][name]), config.model.num_classes
        if entries in (0, count):
            return None
        return (
            field,
            f"has {entries} entries for --config.model.num_classes={count}; give one per "
            "class, class 0 (background) first, or () for the defaults",
        )

    return rule


def _ignore_label_not_a_class(config) -> tuple[str, str] | None:
    count = config.model.num_classes
    if count == 1 or config.data.ignore_label >= count:
        return None
    return (
        "data.ignore_label",
        f"is one of the classes 0..{count - 1}; give a value above them, e.g. 255",
    )


def _wandb_project_named(config) -> tuple[str, str] | None:
    if not config.log.wandb or config.log.wandb_project.strip():
        return None
    return (
        "log.wandb_project",
        "is empty while --config.log.wandb=True; name a project, or turn wandb off",
    )


# Rules over several fields, checked once every field is fine on its own:
# `rule(config) -> (path, problem) | None`.
CROSS_FIELD_RULES: tuple[Callable[[Any], tuple[str, str] | None], ...] = (
    _image_size_suits_arch,
    _something_to_train,
    _warmup_within_run,
    _one_per_class("data.class_names"),
    _one_per_class("train.class_weights"),
    _ignore_label_not_a_class,
    _wandb_project_named,
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a run's config; call it first thing in an entry point.

    Args:
        config: the run's config (`data`, `model`, `train`, `log` groups).

    Raises:
        UserError: one line `--config.GROUP.FIELD=VALUE: what is wrong; the fix`
            for the first problem found.
    """
    values = dict(config_fields.leaves(config))
    for path, value in values.items():
        if path not in FIELDS:
            raise UserError(f"--config.{path}={_shown(value)}: {_unknown(path)}")
    for path, check in FIELDS.items():
        if path not in values:
            raise UserError(
                f"--config.{path}: missing from the config; start the config file from "
                "configs/nail_unet_effb4.get_config() and override what differs"
            )
        problem = check(values[path])
        if problem:
            raise UserError(f"--config.{path}={_shown(values[path])}: {problem}")
    for rule in CROSS_FIELD_RULES:
        found = rule(config)
        if found:
            path, problem = found
            raise UserError(f"--config.{path}={_shown(values[path])}: {problem}")


def _unknown(path: str) -> str:
    return f"no such field (set by the config file); {config_fields.nearest_hint(path, FIELDS)}"


def _shown(value) -> str:
    """The value as a message shows it: strings quoted, so that '' is visible."""
    return repr(value) if isinstance(value, str) else str(value)
