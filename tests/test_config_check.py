"""Config validation and the shared command line: one `error:` line per mistake, exit 2."""

import glob
import importlib
import os
import sys

import trainer  # noqa: F401
from trainer import cli, config_check
from trainer.errors import UserError

import ml_collections
import pytest
from absl import flags

from configs import demo_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**fields):
    """The demo config with `fields` ({'group.field': value}) set, types unchecked."""
    values = demo_cpu.get_config().to_dict()
    for path, value in fields.items():
        group, field = path.split(".")
        values.setdefault(group, {})[field] = value
    return ml_collections.ConfigDict(values, type_safe=False)


def _message(config) -> str:
    with pytest.raises(UserError) as error:
        config_check.validate(config)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(REPO, "configs", "[!_]*.py"))), ids=os.path.basename
)
def test_every_config_file_passes(path):
    module = importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")
    config_check.validate(module.get_config())


# Each field: a bad value and words its message must hold.
BAD_VALUES = [
    ("data.image_size", -64, "at least 1"),
    ("data.image_size", 0, "at least 1"),
    ("data.batch_size", 0, "at least 1"),
    ("data.batch_size", 2.5, "not a whole number"),
    ("data.balanced", "yes", "True or False"),
    ("data.augment", 1, "True or False"),
    ("data.vertical_flip", "yes", "True or False"),
    ("data.augment_strength", 0.0, "above 0"),
    ("data.augment_strength", 3.0, "at most 2"),
    ("data.valid_fraction", 0.0, "between 0 and 1"),
    ("data.valid_fraction", 1.0, "between 0 and 1"),
    ("data.num_parallel_calls", -1, "at least 0"),
    ("data.prefetch_batches", -2, "at least 0"),
    ("data.cache", "memory", "choose one of none, disk"),
    ("data.resize", "tile", "choose one of stretch, pad, crop"),
    ("data.crop_scale", 0.5, "at least 1"),
    ("data.cache_dir", None, "not a string"),
    ("data.shuffle_buffer", 0, "at least 1"),
    ("data.ignore_label", 256, "at most 255"),
    ("data.ignore_label", -1, "at least 0"),
    ("data.class_names", "nail", "not a tuple"),
    ("data.class_names", ("background", ""), "entry 1 (''): is empty"),
    ("model.num_classes", 0, "at least 1"),
    ("model.num_classes", 2.0, "not a whole number"),
    ("model.arch", "segnet", "choose one of unet, fpn"),
    ("model.backbone", "resnet19", "did you mean resnet18?"),
    ("model.encoder_weights", "/nonexistent/weights.h5", "no such file"),
    ("model.encoder_weights", 3, "'imagenet', 'none'"),
    ("model.encoder_freeze", None, "True or False"),
    ("model.decoder_filters", (256, 128, 64, 32), "needs 5 whole numbers"),
    ("model.decoder_filters", (256, 128, 64, 32, 0), "of at least 1"),
    ("model.decoder_filters", ("a,b",), "256,128,64,32,16"),
    ("model.sync_batchnorm", "auto", "true or false (or leave it unset)"),
    ("model.batchnorm_momentum", 1.0, "must be below 1"),
    ("train.epochs", -1, "at least 0"),
    ("train.steps", -5, "at least 0"),
    ("train.optimizer", "adagrad", "choose one of radam, adam, adamw, sgd"),
    ("train.learning_rate", 0.0, "above 0"),
    ("train.learning_rate", "fast", "not a number"),
    ("train.lr_schedule", "linear", "choose one of cosine, constant"),
    ("train.warmup_steps", -1, "at least 0"),
    ("train.weight_decay", -0.1, "at least 0"),
    ("train.focal_weight", -1.0, "at least 0"),
    ("train.cross_entropy_weight", -0.5, "at least 0"),
    ("train.class_weights", (1.0, 0.0), "entry 1 (0.0): must be above 0"),
    ("train.class_weights", 2.0, "not a tuple"),
    ("train.momentum", 1.5, "at most 1"),
    ("train.ema_decay", 1.0, "must be below 1"),
    ("train.precision", "fp8", "choose one of float32, mixed_float16, mixed_bfloat16"),
    ("train.jit_compile", "xla", "True or False"),
    ("train.steps_per_execution", 0, "at least 1"),
    ("train.eval_every", -1, "at least 0"),
    ("train.checkpoint_every", -1, "at least 0"),
    ("train.log_every", -1, "at least 0"),
    ("train.keep_checkpoints", 0, "at least 1"),
    ("train.seed", -1, "at least 0"),
    ("train.seed", 2**32, "at most 4294967295"),
    ("train.max_bad_steps", -1, "at least 0"),
    ("log.wandb", "on", "True or False"),
    ("log.wandb_project", 3, "not a string"),
    ("log.num_samples", -1, "at least 0"),
]


@pytest.mark.parametrize("path, value, words", BAD_VALUES)
def test_each_field_rejects_a_bad_value_in_one_line(path, value, words):
    message = _message(_config(**{path: value}))
    assert message.startswith(f"--config.{path}={value!r}: "), message
    assert words in message


def test_every_field_has_a_bad_value_case():
    assert {path for path, _, _ in BAD_VALUES} == set(config_check.FIELDS)


@pytest.mark.parametrize(
    "fields, start, words",
    [
        ({"data.image_size": 100}, "--config.data.image_size=100: ", "use 96 or 128"),
        (
            {"data.image_size": 64, "model.arch": "pspnet"},
            "--config.data.image_size=64: ",
            "multiple of 48",
        ),
        (
            {"train.steps": 100, "train.warmup_steps": 200},
            "--config.train.warmup_steps=200: ",
            "longer than the run",
        ),
        ({"train.steps": 0, "train.epochs": 0}, "--config.train.steps=0: ", "epochs=0 too"),
        (
            {"model.num_classes": 3, "train.class_weights": (1.0, 2.0)},
            "--config.train.class_weights=(1.0, 2.0): ",
            "has 2 entries for --config.model.num_classes=3",
        ),
        (
            {"model.num_classes": 3, "data.class_names": ("bg", "nail")},
            "--config.data.class_names=('bg', 'nail'): ",
            "give one per class",
        ),
        (
            {"model.num_classes": 3, "data.ignore_label": 2},
            "--config.data.ignore_label=2: ",
            "is one of the classes 0..2",
        ),
        (
            {"log.wandb": True, "log.wandb_project": " "},
            "--config.log.wandb_project=' ': ",
            "name a project",
        ),
    ],
)
def test_rules_across_fields(fields, start, words):
    message = _message(_config(**fields))
    assert message.startswith(start) and words in message, message


def test_fields_that_are_fine_together_pass():
    config_check.validate(
        _config(
            **{
                "model.num_classes": 3,
                "data.class_names": ("background", "nail", "tip"),
                "train.class_weights": (0.5, 1.0, 2.0),
            }
        )
    )
    # Binary runs do not use the ignore label (255 is foreground in 0/255 masks).
    config_check.validate(_config(**{"model.num_classes": 1, "data.ignore_label": 0}))
    config_check.validate(_config(**{"model.arch": "pspnet", "data.image_size": 96}))
    config_check.validate(_config(**{"model.arch": "UNet", "model.sync_batchnorm": True}))
    config_check.validate(
        _config(**{"train.steps": 0, "train.epochs": 1, "train.warmup_steps": 10**6})
    )


def test_misspelled_field_of_a_config_file_names_the_nearest_field():
    message = _message(_config(**{"train.learning_rat": 0.1}))
    assert message.startswith("--config.train.learning_rat=0.1: no such field")
    assert "did you mean --config.train.learning_rate?" in message


def test_unknown_field_without_a_near_one_lists_its_group():
    assert "train has epochs, steps," in _message(_config(**{"train.zzz": 1}))
    assert "the groups are data, log, model, train" in _message(_config(**{"other.x": 1}))


def test_missing_field_is_named():
    values = demo_cpu.get_config().to_dict()
    del values["train"]["momentum"]
    message = _message(ml_collections.ConfigDict(values))
    assert message.startswith("--config.train.momentum: missing from the config")


# ------------------------------------------------------------------ command line


@pytest.fixture
def parse(monkeypatch):
    """parse(*args) -> the config of `prog --config=configs/demo_cpu.py *args`, fresh flags."""

    def parse_args(*args, config="configs/demo_cpu.py"):
        flag_values = flags.FlagValues()
        cli.define_config_flag(flag_values=flag_values)
        flags.DEFINE_string("workdir", None, "Work directory.", flag_values=flag_values)
        argv = ["prog", *([f"--config={config}"] if config else []), *args]
        # ml_collections reads the overrides from sys.argv, not from the parsed argv.
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.chdir(REPO)
        cli.parse_or_exit(argv, flag_values)
        return flag_values.config

    return parse_args


def _exit_line(capsys, parse, *args, **kwargs) -> str:
    """The one stderr line of a command line that exits 2."""
    with pytest.raises(SystemExit) as exit_info:
        parse(*args, **kwargs)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "override, start",
    [
        ("--config.data.batch_size=0", "--config.data.batch_size=0: must be at least 1"),
        ("--config.train.precision=fp8", "--config.train.precision='fp8': unknown value"),
        ("--config.data.image_size=-64", "--config.data.image_size=-64: must be at least 1"),
        ("--config.data.image_size=100", "--config.data.image_size=100: does not suit unet"),
    ],
)
def test_overrides_with_bad_values_fail_validation_in_one_line(parse, override, start):
    config = parse(override)
    with pytest.raises(UserError, match=f"^{start}"):
        config_check.validate(config)


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["--config.train.learning_rat=0.1"],
            "error: --config.train.learning_rat: no such field; "
            "did you mean --config.train.learning_rate?",
        ),
        (["--config.trai.steps=3"], "did you mean --config.train.steps?"),
        (["--config.zzz=1"], "the groups are data, log, model, train"),
        (
            ["--config.data.batch_size=abc"],
            "error: --config.data.batch_size=abc: not a whole number; give a whole number",
        ),
        (["--config.train.learning_rate=fast"], "learning_rate=fast: not a number"),
        (["--config.model.sync_batchnorm=maybe"], "sync_batchnorm=maybe: not true or false"),
        (["--config.train=3"], "--config.train=3: a group of fields, not a value"),
        (["--workdirr=/tmp/w"], "Did you mean: workdir"),
    ],
)
def test_command_line_mistakes_exit_2_with_one_line(capsys, parse, args, line):
    assert line in _exit_line(capsys, parse, *args)


def test_missing_or_unreadable_config_file_is_one_line(capsys, parse):
    assert "--config is required" in _exit_line(capsys, parse, config=None)
    line = _exit_line(capsys, parse, config="configs/missing.py")
    assert "--config=configs/missing.py: cannot read this config file" in line
    line = _exit_line(capsys, parse, "--config.data.batch_size=3", config="configs/missing.py")
    assert "--config=configs/missing.py: cannot read this config file" in line


def test_good_overrides_parse(parse):
    config = parse("--config.data.batch_size=8", "--config.model.decoder_filters=(32,16,16,8,8)")
    assert config.data.batch_size == 8 and config.model.decoder_filters == (32, 16, 16, 8, 8)
    config_check.validate(config)


def test_distribution_flags_offer_tpu_only_when_it_is_a_choice():
    every, some = flags.FlagValues(), flags.FlagValues()
    cli.define_distribution_flags(flag_values=every)
    cli.define_distribution_flags(("one_device", "mirrored"), flag_values=some)
    assert {"strategy", "tpu", "num_cpu_devices"} <= set(every)
    assert "tpu" not in some and {"strategy", "num_cpu_devices"} <= set(some)


def test_train_command_with_a_misspelled_field_exits_2_in_one_line(
    run_module, assert_one_error_line, tmp_path
):
    process = run_module(
        "train",
        "--config=configs/demo_cpu.py",
        "--config.train.learning_rat=0.1",
        f"--data_root={tmp_path / 'data'}",
        f"--workdir={tmp_path / 'work'}",
        timeout=300,
    )
    assert_one_error_line(process, "--config.train.learning_rate?")
