"""The network itself: preprocessing inside the model, BatchNorm kept in inference mode, weight errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from expr_core.worker.model import WeightsUnavailable, build_network, set_phase


def _moving_stats(model: keras.Model) -> list[np.ndarray]:
    return [
        np.array(w)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


def test_densenet_preprocessing_lives_inside_the_model():
    net = build_network("densenet201", 3, 32, "none")
    image = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    normalise = net.model.get_layer("imagenet_normalization")
    expected = keras.applications.densenet.preprocess_input(image.copy())
    np.testing.assert_allclose(np.array(normalise(image)), expected, rtol=1e-4, atol=1e-4)
    assert net.model.output_shape == (None, 3)
    assert not net.base.trainable  # phase 1


def test_fine_tuning_keeps_pretrained_batchnorm_frozen_and_lets_random_batchnorm_learn(tmp_path):
    donor = build_network("mobilenetv3small", 2, 32, "none")
    weights = tmp_path / "pretrained.weights.h5"
    donor.base.save_weights(weights)
    image = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    for source, should_change in ((str(weights), False), ("none", True)):
        net = build_network("mobilenetv3small", 2, 32, source)
        set_phase(net, fine_tune=True)
        before = _moving_stats(net.base)
        net.model(image, training=True)  # what fit() does; Keras 3 would override a training=False call argument
        changed = any(not np.array_equal(old, new) for old, new in zip(before, _moving_stats(net.base), strict=True))
        assert changed is should_change, source
        assert len(net.model.trainable_weights) > len(net.head.trainable_weights)


def test_the_head_is_shared_by_the_full_model():
    net = build_network("mobilenetv3small", 2, 32, "none")
    features = np.random.default_rng(1).normal(size=(1, net.head.input_shape[-1])).astype("float32")
    image = np.full((1, 32, 32, 3), 127, "float32")
    net.head.layers[-1].kernel.assign(np.zeros(net.head.layers[-1].kernel.shape))
    net.head.layers[-1].bias.assign([3.0, 0.0])  # a change made through the head ...
    np.testing.assert_allclose(np.array(net.model(image)), np.array(net.head(features)), atol=1e-6)  # ... shows here


def test_imagenet_download_failure_tells_the_user_what_to_do(monkeypatch: pytest.MonkeyPatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] no network")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(WeightsUnavailable) as caught:
        build_network("densenet201", 2, 32, "imagenet")
    message = str(caught.value)
    for part in (
        "Could not download the ImageNet weights",
        "no network",
        "weights 'none'",
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "KERAS_HOME",
    ):
        assert part in message


def test_a_local_weights_file_is_used_and_a_wrong_one_is_refused(tmp_path):
    donor = build_network("mobilenetv3small", 2, 32, "none")
    path = tmp_path / "mobilenet.weights.h5"
    donor.base.save_weights(path)
    net = build_network("mobilenetv3small", 2, 32, str(path))
    np.testing.assert_array_equal(np.array(net.base.weights[0]), np.array(donor.base.weights[0]))
    with pytest.raises(WeightsUnavailable, match="does not fit densenet201"):
        build_network("densenet201", 2, 32, str(path))
