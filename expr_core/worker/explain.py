"""Why did the model say that: Grad-CAM heat maps on the backbone's last convolutional block.

For each face, the gradient of the predicted class's probability with respect to the base's output
feature maps says how much each map matters; their weighted sum (positive part), upsampled to the
crop, shows which face regions drove the prediction. Needs TensorFlow and the ``.keras`` model, so it
runs in a worker process (``python -m expr_core explain``), never in the Streamlit server.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from expr_core import atomic
from expr_core.errors import ModelFileError
from expr_core.registry import ModelFiles
from expr_core.settings import Settings
from expr_core.vision.faces import FaceDetector, crop_face
from expr_core.worker.base import whole_network

SHOWN_SIZE = 192  # crops and heat maps are shown at this size


def load_model(path: Path, settings: Settings) -> tuple[keras.Model, list[str]]:
    """The Keras model and labels of a run folder, its ``model/`` folder, or a ``.keras`` file; a first model
    ("prepared base + head") not assembled yet is put together in memory."""
    files = ModelFiles.locate(path)
    if Path(path).suffix != ".keras" and files.is_head_model and not files.keras.is_file():
        return whole_network(settings, files), files.labels()
    keras_file = Path(path) if Path(path).suffix == ".keras" else files.keras
    if not keras_file.is_file():
        raise ModelFileError(f"{path}: no .keras model there (explanations need the Keras model, not the TFLite file).")
    return keras.saving.load_model(keras_file, compile=False), ModelFiles(keras_file.parent).labels()


def _split_at_base(model: keras.Model) -> tuple[list, keras.Model, list]:
    """The layers before the backbone, the backbone (a nested model), and the layers after it."""
    layers = model.layers[1:]  # [0] is the input layer
    for i, layer in enumerate(layers):
        if isinstance(layer, keras.Model):
            return layers[:i], layer, layers[i + 1 :]
    raise ModelFileError("This model has no nested backbone, so its last convolutional block cannot be found.")


def gradcam(model: keras.Model, batch_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(n, k)`` and heat maps ``(n, size, size)`` in 0..1 for a float RGB 0..255 batch."""
    before, base, after = _split_at_base(model)
    x = tf.convert_to_tensor(batch_rgb, tf.float32)
    for layer in before:
        x = layer(x, training=False)
    with tf.GradientTape() as tape:
        features = base(x, training=False)
        tape.watch(features)
        y = features
        for layer in after:
            y = layer(y, training=False)
        top = tf.argmax(y, axis=1)
        score = tf.gather(y, top, axis=1, batch_dims=1)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
    size = batch_rgb.shape[1]
    maps = np.stack(
        [cv2.resize(c / c.max() if c.max() > 0 else c, (size, size), interpolation=cv2.INTER_CUBIC) for c in cams]
    )
    return y.numpy(), np.clip(maps, 0, 1)


def overlay(crop_bgr: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map in the JET colour map blended over the crop (red: most important)."""
    heat = cv2.resize(heat, (crop_bgr.shape[1], crop_bgr.shape[0]))
    colored = cv2.applyColorMap((255 * heat).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(crop_bgr, 1 - alpha, colored, alpha, 0)


def _write_png(path: Path, image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ModelFileError(f"Could not encode {path.name}.")
    atomic.write_bytes(path, data.tobytes())
    return str(path)


def explain_image(
    model_path: Path, image: np.ndarray, detector: FaceDetector, settings: Settings, out: Path
) -> list[dict]:
    """For every face: box, label, probabilities, and the paths of its crop and heat-map PNGs in ``out``."""
    model, labels = load_model(model_path, settings)
    margin = settings.crop_margin
    size = int(model.inputs[0].shape[1])
    faces = detector.detect(image)
    if not faces:
        return []
    crops = [crop_face(image, face, margin, size) for face in faces]
    probs, maps = gradcam(model, np.stack([c[..., ::-1] for c in crops]).astype("float32"))
    entries = []
    for i, (face, crop, p, heat) in enumerate(zip(faces, crops, probs, maps, strict=True), start=1):
        shown = cv2.resize(crop, (SHOWN_SIZE, SHOWN_SIZE), interpolation=cv2.INTER_CUBIC)
        entries.append(
            {
                "box": list(face.box),
                "label": labels[int(p.argmax())],
                "probs": {label: round(float(v), 4) for label, v in zip(labels, p, strict=True)},
                "crop": _write_png(Path(out) / f"face{i}.png", shown),
                "heatmap": _write_png(Path(out) / f"face{i}_heat.png", overlay(shown, heat)),
            }
        )
    return entries
