"""Helpers for tests: small images and masks, tmpfs mounts, metrics records, a strategy.

A helper module, not a test module.
"""

import ctypes
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def write_image(path: Path, size=(8, 6), *, value=None, mode="RGB") -> Path:
    """Writes a small image; masks get `value` everywhere (or a half-foreground pattern)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        pixels = np.zeros(size[::-1], np.uint8)
        pixels[: size[1] // 2] = 255
        if value is not None:
            pixels[:] = value
    else:
        pixels = np.full((*size[::-1], 3), 120, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_pair(root: Path, image: str, mask: str, **mask_kwargs) -> None:
    write_image(root / image)
    write_image(root / mask, mode="L", **mask_kwargs)


def names(frame: pd.DataFrame, column="images") -> list[str]:
    return [Path(path).name for path in frame[column]]


_MS_RDONLY = 1
_MS_REMOUNT = 32
_MNT_DETACH = 2  # lazy: a file TensorFlow still holds open must not keep the mount


def mount_tmpfs(target, *, size: str, read_only: bool = False) -> None:
    """Mounts a size-limited tmpfs in-process (root only); skips the test where it cannot."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    libc = ctypes.CDLL(None, use_errno=True)
    flags = _MS_RDONLY if read_only else 0
    result = libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, f"size={size}".encode())
    if result != 0:
        pytest.skip(f"cannot mount a tmpfs here: {os.strerror(ctypes.get_errno())}")


def resize_tmpfs(target, *, size: str) -> None:
    """Grows (or shrinks) a tmpfs of `mount_tmpfs` in place, keeping its files."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.mount(
        b"tmpfs", os.fsencode(target), b"tmpfs", _MS_REMOUNT, f"size={size}".encode()
    )
    assert result == 0, os.strerror(ctypes.get_errno())


def unmount(target) -> None:
    """Unmounts what `mount_tmpfs` mounted, also while a file in it is still open."""
    ctypes.CDLL(None, use_errno=True).umount2(os.fsencode(target), _MNT_DETACH)


def metrics_records(workdir) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl, read as the trainer reads them."""
    from trainer import report
    from trainer import workdir as workdir_lib

    return report.read_metrics(os.path.join(str(workdir), workdir_lib.METRICS_FILE))


def one_device():
    """The CPU as a one-device strategy, as `--strategy=one_device` gives on a CPU machine."""
    import tensorflow as tf

    return tf.distribute.OneDeviceStrategy("/cpu:0")


def training_state(workdir, *, is_chief=True, every_steps=0, seed=0, keep=3):
    """A `checkpoint.TrainingState` over a tiny Dense model and Adam, at step 0.

    Returns:
        `(state, model, optimizer, step)`; nothing is restored yet.
    """
    from trainer import checkpoint

    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.Input([3]), tf.keras.layers.Dense(2)])
    optimizer = tf.keras.optimizers.Adam(0.1)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    state = checkpoint.TrainingState(
        str(workdir),
        step=step,
        model=model,
        optimizer=optimizer,
        is_chief=is_chief,
        keep=keep,
        every_steps=every_steps,
    )
    return state, model, optimizer, step
