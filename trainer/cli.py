"""The command line shared by the entry points: common flags, parsing, exit on user errors.

Every entry point defines its shared flags here (`define_config_flag`,
`define_distribution_flags`) and ends with `cli.run(main)` instead of
`app.run(main)`. A mistake on the command line, such as a misspelled
`--config.train.learning_rat=0.1`, a value of the wrong type or an unknown
flag, then ends in one `error: ...` line on stderr and exit status 2, as a
`UserError` raised in `main` does; never in a traceback.

Imports no TensorFlow, so that the data tools start fast.
"""

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from trainer import config_fields
from trainer.errors import exit_on_user_error

import ml_collections
from absl import app, flags
from ml_collections import config_flags

CONFIG_FLAG = "config"
EXIT_USER_ERROR = 2
# absl's message for a required flag left out.
_REQUIRED = re.compile(r"Flag --(\S+) must have a value other than None")


def define_config_flag(
    default: str | None = None, *, flag_values: flags.FlagValues = flags.FLAGS
) -> flags.FlagHolder:
    """Defines `--config=configs/NAME.py`, locked, with `--config.GROUP.FIELD=VALUE` overrides.

    Locked: an override of a field the config lacks is an error, not a new field.

    Args:
        default: config file used when the flag is not given; None makes it required.
        flag_values: the FlagValues to define it in (tests pass their own).

    Returns:
        The flag's holder; `.value` is the config with the overrides applied.
    """
    holder = config_flags.DEFINE_config_file(
        CONFIG_FLAG,
        default,
        "Config file (configs/NAME.py); override any field with --config.GROUP.FIELD=VALUE.",
        flag_values=flag_values,
        lock_config=True,
    )
    if default is None:
        flags.mark_flag_as_required(CONFIG_FLAG, flag_values=flag_values)
    return holder


def define_distribution_flags(
    strategies: tuple[str, ...] | None = None, *, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Defines `--strategy`, `--num_cpu_devices` and, when `tpu` is a choice, `--tpu`.

    Args:
        strategies: the strategies this entry point supports; None means all of
            `trainer.distribute.STRATEGIES`.
        flag_values: the FlagValues to define them in (tests pass their own).
    """
    if strategies is None:
        # Imported here: distribute imports TensorFlow, which the data tools never need.
        from trainer import distribute

        strategies = distribute.STRATEGIES
    flags.DEFINE_enum(
        "strategy", "one_device", strategies, "tf.distribute strategy.", flag_values=flag_values
    )
    if "tpu" in strategies:
        flags.DEFINE_string(
            "tpu",
            None,
            "TPU name or address for --strategy=tpu ('local' on a TPU VM).",
            flag_values=flag_values,
        )
    flags.DEFINE_integer(
        "num_cpu_devices",
        1,
        "Split the host CPU into N logical devices (tests of --strategy=mirrored without GPUs).",
        lower_bound=1,
        flag_values=flag_values,
    )


def run(main: Callable[[list[str]], Any]) -> None:
    """Runs an absl `main` as `app.run` does, with one-line errors for the user's mistakes.

    A flag that cannot be parsed (see `parse_or_exit`) or a `UserError` raised
    in `main` prints one `error: ...` line and exits with status 2.
    """
    app.run(exit_on_user_error(main), flags_parser=parse_or_exit)


def parse_or_exit(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parses the command line into `flag_values`; a mistake exits 2 with one `error:` line.

    ml_collections applies `--config.a.b=...` overrides while absl parses the
    flags, so a misspelled field raises AttributeError or KeyError there and a
    value of the wrong type an absl `flags.Error`; both are explained here in
    the user's terms (the field, the nearest real field, the expected type).

    Args:
        argv: the command line, the program's name first.
        flag_values: the flags to parse into.

    Returns:
        The arguments left after the flags, the program's name first.
    """
    try:
        remaining = flag_values(argv)
    except (flags.Error, AttributeError, KeyError, OSError) as error:
        message = explain_parse_error(error, argv, flag_values)
        if message is None:
            raise
    else:
        # ml_collections defers a config file it cannot read until the config is used.
        config_flag = flag_values[CONFIG_FLAG] if CONFIG_FLAG in flag_values else None
        if config_flag is None or config_flag.value is None or _is_config(config_flag.value):
            return remaining
        message = _unreadable(config_flag.config_filename)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def explain_parse_error(
    error: Exception, argv: list[str], flag_values: flags.FlagValues
) -> str | None:
    """One line saying what is wrong on the command line, or None when it is not the user's.

    Args:
        error: what parsing `argv` raised.
        argv: the command line, the program's name first.
        flag_values: the flags `argv` was parsed into.
    """
    if CONFIG_FLAG in flag_values:
        message = _explain_config_error(error, argv, flag_values)
        if message:
            return message
    if isinstance(error, flags.Error):
        required = _REQUIRED.search(str(error))
        if required:
            return f"--{required.group(1)} is required; give it (--helpshort lists the flags)"
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # A multi-line message holds a traceback of the config file; its last line says what.
        message = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        return message.removeprefix("flag ")
    return None


def _explain_config_error(error: Exception, argv: list[str], flag_values) -> str | None:
    config_path = _config_file(argv)
    if config_path is None:
        return None
    try:
        config = flag_values[CONFIG_FLAG].parser.parse(config_path)
    except Exception:
        # A bug in the config file itself: absl's message (its traceback) says where.
        return None
    if not _is_config(config):
        return _unreadable(config_path)
    for path, value in _overrides(argv):
        missing = _missing_field(config, path)
        if missing:
            return missing
        if isinstance(error, flags.Error) and f"--{CONFIG_FLAG}.{path}=" in str(error):
            return _wrong_type(config, path, value)
    return None


def _is_config(value) -> bool:
    return isinstance(value, ml_collections.ConfigDict)


def _unreadable(config_path: str) -> str:
    return (
        f"--{CONFIG_FLAG}={config_path}: cannot read this config file; give an existing one, "
        f"e.g. --{CONFIG_FLAG}=configs/demo_cpu.py"
    )


def _config_file(argv: list[str]) -> str | None:
    """The value of `--config=PATH` (or `--config PATH`) in argv."""
    for index, arg in enumerate(argv):
        for prefix in (f"--{CONFIG_FLAG}=", f"-{CONFIG_FLAG}="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        if arg in (f"--{CONFIG_FLAG}", f"-{CONFIG_FLAG}") and index + 1 < len(argv):
            return argv[index + 1]
    return None


def _overrides(argv: list[str]) -> Iterator[tuple[str, str | None]]:
    """(field path, value as typed) of each `--config.a.b=value` in argv."""
    for arg in argv:
        for prefix in (f"--{CONFIG_FLAG}.", f"-{CONFIG_FLAG}.", f"--no{CONFIG_FLAG}."):
            if arg.startswith(prefix):
                path, _, value = arg[len(prefix) :].partition("=")
                yield path, value if "=" in arg else None


def _missing_field(config: ml_collections.ConfigDict, path: str) -> str | None:
    """'no such field; did you mean ...' when `path` names no field of `config`."""
    fields = dict(config_fields.leaves(config))
    if path in fields or any(field.startswith(f"{path}.") for field in fields):
        return None
    return f"--{CONFIG_FLAG}.{path}: no such field; {config_fields.nearest_hint(path, fields)}"


# What a field of each type takes on the command line.
_EXPECTED = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    tuple: "a tuple of values, e.g. '(1,2,3)' or 1,2,3",
    list: "a list of values, e.g. '[1,2,3]'",
}


def _wrong_type(config: ml_collections.ConfigDict, path: str, value: str | None) -> str:
    group_path, _, key = path.rpartition(".")
    group = config
    for part in filter(None, group_path.split(".")):
        group = group[part]
    default = group[key]
    if isinstance(default, ml_collections.ConfigDict):
        first = next(iter(default.keys()), "FIELD")
        return (
            f"--{CONFIG_FLAG}.{path}={value}: a group of fields, not a value; override one "
            f"field, e.g. --{CONFIG_FLAG}.{path}.{first}=..."
        )
    field_type = group.get_type(key)
    expected = _EXPECTED.get(field_type, f"a {getattr(field_type, '__name__', field_type)}")
    example = f" (the config has {default!r})" if default is not None else ""
    return f"--{CONFIG_FLAG}.{path}={value}: not {expected}; give {expected}{example}"
