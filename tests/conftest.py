"""Shared pytest fixtures."""

from trainer.data import synthetic

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic data set in the seed's layout: 48 pairs at 64 px, seed 0.

    Session-wide and shared, so tests must not modify it; copy it first.
    """
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(root, num_images=48, image_size=64, seed=0)
    return root
