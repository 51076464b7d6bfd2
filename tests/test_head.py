"""The NumPy head (``expr_core.head``): it learns, weighs rare labels up, keeps its best epoch, survives a round trip
through a file, matches Keras' Dense layers and Keras' own training, and trains in little memory without TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from expr_core.errors import ModelFileError
from expr_core.head import (
    LOSS_TIEBREAK,
    MONITOR,
    SELECTION,
    TRAIN_MONITOR,
    HeadConfig,
    HeadWeights,
    balanced_accuracy,
    class_weights,
    evaluate,
    initial_weights,
    train_head,
)

REPO = Path(__file__).resolve().parents[1]


def blobs(rng: np.random.Generator, counts: list[int], d: int = 16, sep: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """``counts[k]`` Gaussian vectors for label k, centred ``sep`` along axis k (unit spread): well apart."""
    xs, ys = [], []
    for label, count in enumerate(counts):
        centre = np.zeros(d, np.float32)
        centre[label] = sep
        xs.append(rng.normal(centre, 1.0, (count, d)).astype(np.float32))
        ys.append(np.full(count, label))
    return np.concatenate(xs), np.concatenate(ys)


def recall(weights: HeadWeights, x: np.ndarray, y: np.ndarray, label: int) -> float:
    return float(np.mean(weights.predict(x).argmax(axis=1)[y == label] == label))


# -- learning ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_labels", [2, 3])
def test_it_learns_separable_blobs(n_labels):
    rng = np.random.default_rng(n_labels)
    x, y = blobs(rng, [60] * n_labels)
    xv, yv = blobs(rng, [30] * n_labels)
    result = train_head(x, y, xv, yv, n_labels, HeadConfig(epochs=15))
    # Early stopping keeps the best balanced accuracy, ties broken by the lower validation loss.
    assert result.monitor == SELECTION and result.history[MONITOR][result.best_epoch] == 1.0
    assert result.best == pytest.approx(1.0 - LOSS_TIEBREAK * result.history["val_loss"][result.best_epoch])
    assert balanced_accuracy(yv, result.weights.predict(xv).argmax(axis=1), n_labels) == 1.0
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy", MONITOR, SELECTION, "lr"}
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert not result.stopped and not result.non_finite
    probs = result.weights.predict(xv)
    assert probs.dtype == np.float32 and probs.shape == (len(xv), n_labels)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_class_weights_keep_the_minority_label_recognised():
    """90/10 labels that overlap: feature 0 is N(0, 1) for the majority and N(1.5, 1) for the minority.

    The loss without class weights is lowest with the boundary where 9:1 priors put it (x0 ~ 2.2), which finds
    only about a quarter of the minority; balanced weights move it to the middle (x0 ~ 0.75), finding about
    three quarters. Measured on this data: minority recall 0.78 with class weights, 0.30 without. The test runs
    both, so it would fail if the weights were dropped (or not applied per sample).
    """
    rng = np.random.default_rng(0)

    def make(n_major: int, n_minor: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0, 1, (n_major + n_minor, 8)).astype(np.float32)
        x[n_major:, 0] += 1.5
        return x, np.r_[np.zeros(n_major, int), np.ones(n_minor, int)]

    x, y = make(450, 50)
    xv, yv = make(900, 100)
    np.testing.assert_allclose(class_weights(y, 2), [500 / (2 * 450), 500 / (2 * 50)])
    config = HeadConfig(epochs=30, patience=30, seed=0)
    weighted = train_head(x, y, xv, yv, 2, config)
    unweighted = train_head(x, y, xv, yv, 2, HeadConfig(epochs=30, patience=30, seed=0, class_weighted=False))
    assert recall(weighted.weights, xv, yv, 1) >= 0.65
    assert recall(unweighted.weights, xv, yv, 1) < 0.5  # the same test, without class weights, fails
    assert weighted.best > unweighted.best


def test_early_stopping_keeps_the_best_epoch():
    """A shortcut that holds in training only (like a lamp that happened to light one expression's sessions):
    feature 1 separates the training labels perfectly and points the other way in validation. The head learns the
    larger, honest feature 0 first, then more and more the shortcut, so validation balanced accuracy rises, peaks
    and falls (measured: 0.28, 0.55, 0.58, 0.59, 0.57, ...), and the peak's weights must come back."""
    rng = np.random.default_rng(0)

    def make(n: int, shortcut: float) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 2
        sign = np.where(y == 1, 1.0, -1.0)
        x = rng.normal(0, 0.1, (n, 8))
        x[:, 0] = sign + rng.normal(0, 1.2, n)
        x[:, 1] = shortcut * 0.5 * sign + rng.normal(0, 0.02, n)
        return x.astype(np.float32), y

    x, y = make(200, 1.0)
    xv, yv = make(200, -1.0)
    config = HeadConfig(epochs=60, batch_size=16, lr=3e-4, seed=0)
    result = train_head(x, y, xv, yv, 2, config)
    curve = result.history[SELECTION]
    best = int(np.argmax(curve))  # the first of equal maxima, as Keras keeps it
    assert result.best_epoch == best >= 1
    assert len(curve) == best + config.patience + 1 < config.epochs  # stopped `patience` epochs after the peak
    assert curve[-1] < curve[best]  # so keeping the last epoch would have been worse
    scores = evaluate(result.weights, xv, yv)
    assert scores.balanced_accuracy == pytest.approx(result.history[MONITOR][best], abs=1e-12)
    assert scores.loss == pytest.approx(result.history["val_loss"][best], rel=1e-6)


def test_learning_rate_halves_after_three_epochs_without_a_better_validation_loss():
    rng = np.random.default_rng(1)
    x, y = blobs(rng, [40, 40], sep=0.5)  # overlapping: validation loss soon stops improving
    xv, yv = blobs(rng, [40, 40], sep=0.5)
    result = train_head(x, y, xv, yv, 2, HeadConfig(epochs=25, patience=25, lr=1e-2))
    lrs, losses = result.history["lr"], result.history["val_loss"]
    assert lrs[0] == 1e-2 and min(lrs) < 1e-2
    first_cut = next(i for i, lr in enumerate(lrs) if lr < 1e-2)
    assert lrs[first_cut] == 5e-3
    best_before = min(losses[: first_cut - 3])
    assert all(loss + 1e-4 >= best_before for loss in losses[first_cut - 3 : first_cut])


def test_progress_callback_and_cancel_between_batches():
    rng = np.random.default_rng(2)
    x, y = blobs(rng, [50, 50])
    xv, yv = blobs(rng, [10, 10])
    seen, batches = [], []

    def should_stop() -> bool:
        batches.append(1)
        return len(batches) > 10  # 100 vectors / 32 = 4 batches an epoch: stop inside the third epoch

    result = train_head(
        x, y, xv, yv, 2, HeadConfig(epochs=20, patience=20), on_epoch=lambda *a: seen.append(a), should_stop=should_stop
    )
    assert result.stopped and len(result.history["loss"]) == 2
    assert [(epoch, epochs) for epoch, epochs, _ in seen] == [(1, 20), (2, 20)]
    assert seen[0][2] == {key: values[0] for key, values in result.history.items()}


def test_a_non_finite_loss_stops_training_and_stays_in_the_history():
    rng = np.random.default_rng(3)
    x, y = blobs(rng, [50, 50])
    xv, yv = blobs(rng, [10, 10])

    def break_features(epoch: int, epochs: int, logs: dict) -> None:
        if epoch == 2:
            x[:, 0] = np.nan  # the training array is used in place: the third epoch meets NaN features

    result = train_head(x, y, xv, yv, 2, HeadConfig(epochs=10, patience=10), on_epoch=break_features)
    loss = result.history["loss"]
    assert result.non_finite and not result.stopped
    assert len(loss) == 3 and math.isfinite(loss[1]) and math.isnan(loss[2])
    assert result.best_epoch in (0, 1) and result.weights.is_finite()  # the best finished epoch is kept


def test_without_validation_vectors_it_monitors_the_training_set():
    rng = np.random.default_rng(4)
    x, y = blobs(rng, [40, 40])
    result = train_head(x, y, np.empty((0, 16), np.float32), np.empty(0, int), 2, HeadConfig(epochs=8))
    assert result.monitor == TRAIN_MONITOR and result.best == 1.0
    assert set(result.history) == {"loss", "accuracy", TRAIN_MONITOR, "lr"}


def test_settings_come_from_the_training_config_and_bad_inputs_are_refused():
    from expr_core.train_config import TrainConfig

    config = HeadConfig.from_train_config(TrainConfig(epochs_1=7, lr_1=2e-3, batch_size=8, seed=5))
    assert (config.epochs, config.lr, config.batch_size, config.seed, config.patience) == (7, 2e-3, 8, 5, 4)
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"Labels must be in \[0, 2\)"):
        train_head(x, np.array([0, 1, 2, 0]), x, np.array([0, 1, 0, 1]), 2, config)
    with pytest.raises(ValueError, match="Expected features of shape"):
        initial_weights(3, 2).predict(np.zeros((2, 4)))


# -- files -------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    weights = initial_weights(20, 3, seed=1)
    weights.b1[:] = np.linspace(-1, 1, 512)
    path = tmp_path / "model" / "head.npz"
    weights.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["head.npz"]  # the temporary file was renamed, not left
    loaded = HeadWeights.load(path, n_features=20, n_labels=3)
    for a, b in zip(loaded.as_list(), weights.as_list(), strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    features = np.random.default_rng(0).normal(size=(5, 20)).astype(np.float32)
    assert np.array_equal(loaded.predict(features), weights.predict(features))


GOOD = dict(zip(("w1", "b1", "w2", "b2"), initial_weights(6, 2).as_list(), strict=True))


def _npz(name: str, **arrays: np.ndarray):
    def make(folder: Path) -> Path:
        np.savez(folder / name, **arrays)
        return folder / name

    return make


def _bytes(name: str, content: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return make


def _truncated(folder: Path) -> Path:
    full = _npz("full.npz", **GOOD)(folder)
    return _bytes("cut.npz", full.read_bytes()[:300])(folder)


def _single_array(folder: Path) -> Path:
    np.save(folder / "one.npy", GOOD["w1"])
    return folder / "one.npy"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "absent.npz", "does not exist"),
        (_bytes("junk.npz", b"not a zip at all"), "is damaged or not a weights file"),
        (_truncated, "is damaged or not a weights file"),
        (_single_array, "holds a single array"),
        (_npz("part.npz", w1=GOOD["w1"], b1=GOOD["b1"]), "lacks w2, b2"),
        (_npz("short.npz", **{**GOOD, "b1": np.zeros(7, np.float32)}), "the shapes do not chain"),
        (_npz("flat.npz", **{**GOOD, "w2": np.zeros(1024, np.float32)}), "two matrices and two vectors"),
        (_npz("ints.npz", **{**GOOD, "b2": np.zeros(2, np.int64)}), "b2 holds int64 values"),
    ],
)
def test_load_refuses_broken_files_with_a_message(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ModelFileError, match=message) as caught:
        HeadWeights.load(path)
    assert str(path) in str(caught.value) and "Train the model again" in str(caught.value)


def test_load_refuses_a_head_for_another_model(tmp_path):
    path = tmp_path / "head.npz"
    initial_weights(6, 2).save(path)
    with pytest.raises(ModelFileError, match="it is for 6 features, this model has 1920"):
        HeadWeights.load(path, n_features=1920)
    with pytest.raises(ModelFileError, match="it is for 2 labels, this model has 3"):
        HeadWeights.load(path, n_features=6, n_labels=3)


# -- Keras ---------------------------------------------------------------------------------------------
def _keras_head(d: int, n: int, dropout: float = 0.3):
    import keras  # tests may import TensorFlow; expr_core.head never does

    features = keras.Input((d,), name="features")
    hidden = keras.layers.Dense(512, activation="relu", name="head_dense")(features)
    hidden = keras.layers.Dropout(dropout, name="head_dropout")(hidden)
    probs = keras.layers.Dense(n, activation="softmax", name="probabilities")(hidden)
    return keras.Model(features, probs, name="head")


def test_keras_dense_layers_take_the_weights_and_give_the_same_probabilities():
    rng = np.random.default_rng(5)
    x, y = blobs(rng, [30, 30, 30], d=24, sep=2.0)
    trained = train_head(x, y, x[:30], y[:30], 3, HeadConfig(epochs=5)).weights
    model = _keras_head(24, 3)
    model.get_layer("head_dense").set_weights([trained.w1, trained.b1])
    model.get_layer("probabilities").set_weights([trained.w2, trained.b2])
    np.testing.assert_allclose(model.predict(x, verbose=0), trained.predict(x), atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), trained.as_list(), strict=True))

    big = initial_weights(1920, 7, seed=2)  # DenseNet201's pooled size: longer sums, same answers
    features = rng.gamma(1.0, 0.5, (64, 1920)).astype(np.float32)  # pooled ReLU features are >= 0
    model = _keras_head(1920, 7)
    model.set_weights(big.as_list())
    np.testing.assert_allclose(model.predict(features, verbose=0), big.predict(features), atol=1e-5)
    assert HeadWeights.from_list(model.get_weights()).predict(features).dtype == np.float32


def compile_like_the_worker(model, keras) -> None:
    """As expr_core.worker.train._compile, at this test's learning rate."""
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )


def test_training_follows_keras_fit_step_for_step():
    """Without dropout and with one batch per epoch (no shuffling RNG involved), Keras' fit with balanced
    ``class_weight`` and Adam from the same start must log the same losses and accuracies: this pins the loss
    normalisation, the class weights, the gradient and Adam's form, not just the final quality."""
    import keras

    rng = np.random.default_rng(6)
    d, n, m = 20, 3, 64
    x = rng.normal(0, 1, (m, d)).astype(np.float32)
    y = rng.integers(0, n, m)
    y[:30] = 0  # imbalanced, so the class weights matter
    xv = rng.normal(0, 1, (20, d)).astype(np.float32)
    yv = rng.integers(0, n, 20)
    start = initial_weights(d, n, seed=3)
    config = HeadConfig(epochs=5, batch_size=m, lr=1e-2, dropout=0.0, patience=10, lr_patience=10)
    ours = train_head(x, y, xv, yv, n, config, initial=start)

    model = _keras_head(d, n, dropout=0.0)
    model.set_weights(start.as_list())
    compile_like_the_worker(model, keras)
    weights = {i: float(w) for i, w in enumerate(class_weights(y, n))}
    theirs = model.fit(x, y, validation_data=(xv, yv), epochs=5, batch_size=m, verbose=0, class_weight=weights)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(ours.history[key], theirs.history[key], rtol=1e-4, atol=1e-6, err_msg=key)

    one = train_head(x, y, xv, yv, n, HeadConfig(epochs=1, batch_size=m, lr=1e-2, dropout=0.0), initial=start)
    model.set_weights(start.as_list())
    compile_like_the_worker(model, keras)
    model.fit(x, y, epochs=1, batch_size=m, verbose=0, class_weight=weights)
    for a, b in zip(one.weights.as_list(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # 0.1 % of a step: float32 rounding where |g| ~ epsilon


# -- memory, without TensorFlow --------------------------------------------------------------------
TRAIN_IN_A_SMALL_PROCESS = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from expr_core.head import HeadConfig, train_head

    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = rng.gamma(1.0, 0.5, (300, 1920)).astype(np.float32)  # like pooled ReLU features: >= 0
    x[np.arange(300), y] += 6.0
    yv = np.arange(60) % 3
    xv = rng.gamma(1.0, 0.5, (60, 1920)).astype(np.float32)
    xv[np.arange(60), yv] += 6.0
    started = time.perf_counter()
    result = train_head(x, y, xv, yv, 3, HeadConfig(epochs=30, patience=30))  # all 30 epochs run
    seconds = time.perf_counter() - started
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(json.dumps({
        "seconds": seconds,
        "epochs": len(result.history["loss"]),
        "best": result.history["val_balanced_accuracy"][result.best_epoch],
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vm_hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
        "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")),
    }))
    """
)
# Linux carries ru_maxrss across fork + exec: a child started by this pytest process (which other tests here
# grew to ~800 MB with TensorFlow) would report pytest's peak, not its own. A small launcher in between has a
# small memory map, so the measuring process starts from a clean peak.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', sys.argv[1]]).returncode)"


def test_300_vectors_of_1920_features_train_in_well_under_a_gigabyte_without_tensorflow():
    # One BLAS thread: on a busy 2-core machine OpenBLAS' second thread made each product 4x slower (spinning).
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, TRAIN_IN_A_SMALL_PROCESS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n300 x 1920, 30 epochs: {measured}")
    assert measured["heavy"] == []
    assert measured["epochs"] == 30 and measured["best"] == 1.0
    assert measured["ru_maxrss_mb"] < 500 and measured["vm_hwm_mb"] < 500


def test_the_npz_file_is_a_plain_zip_of_npy_arrays(tmp_path):
    """Anything with NumPy can read a head file (no pickles): one ``.npy`` per array plus a format number."""
    path = tmp_path / "head.npz"
    initial_weights(4, 2).save(path)
    assert sorted(zipfile.ZipFile(path).namelist()) == ["b1.npy", "b2.npy", "format.npy", "w1.npy", "w2.npy"]
