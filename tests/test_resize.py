"""`data.resize=pad` end to end: photos of other proportions keep them, from training to predict."""

import os

import cv2
import pytest

from tests.files import one_device

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wide_root(synthetic_root, tmp_path_factory):
    """The synthetic set with every photo and mask stretched to 64 x 112 (w x h: 112 x 64)."""
    root = tmp_path_factory.mktemp("wide")
    for folder, interpolation in (("Images", cv2.INTER_LINEAR), ("Masks", cv2.INTER_NEAREST)):
        for source in sorted((synthetic_root / folder).rglob("*.png")):
            target = root / source.relative_to(synthetic_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(target), cv2.resize(pixels, (112, 64), interpolation=interpolation))
    return root


def test_a_padding_run_trains_evaluates_exports_and_predicts_at_each_photos_size(
    wide_root, tiny_config, tmp_path
):
    from trainer import evaluate, inference, predict, train
    from trainer.data import manifest

    import tensorflow as tf

    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(
        tiny_config(train__steps=2, data__resize="pad"),
        workdir=workdir,
        data_root=str(wide_root),
        strategy=one_device(),
    )
    assert results["step"] == 2
    assert os.listdir(os.path.join(workdir, "cache")) == ["64px_pad"]

    for model in (workdir, results["export_dir"]):
        trained = inference.load_trained_model(model)
        assert trained.resize == "pad", model
        _, valid = manifest.read_manifests(str(wide_root), fallback_dir=workdir)
        counts = evaluate.count_confusions(
            trained, valid, tf.distribute.OneDeviceStrategy("/cpu:0"), global_batch_size=4
        )
        true_area = [int((cv2.imread(m, cv2.IMREAD_GRAYSCALE) > 127).sum()) for m in valid["masks"]]
        at_half = counts[:, evaluate.THRESHOLDS.index(0.5), 0]
        assert (at_half[:, 0] + at_half[:, 2]).tolist() == true_area

        output = str(tmp_path / "predicted" / os.path.basename(model))
        assert predict.predict_files(trained, list(valid["images"][:2]), output) == []
        for name in sorted(os.listdir(output)):
            assert cv2.imread(os.path.join(output, name)).shape[:2] == (64, 112), name
