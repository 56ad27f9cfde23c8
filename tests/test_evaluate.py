"""Metrics against hand-computed cases, and evaluate_classifier against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from toolkit.data.augment import normalize
from toolkit.data.beton import cached_beton
from toolkit.data.folders import scan_labeled_folder
from toolkit.data.loaders import Shard, make_loader
from toolkit.models.cnn import SceneCNN
from toolkit.train.evaluate import (
    classification_metrics,
    classifier_outputs,
    evaluate_classifier,
    expected_calibration_error,
    fit_temperature,
    mean_negative_log_likelihood,
    tempered_log_probabilities,
    with_temperature,
)


def test_metrics_from_a_known_confusion_matrix():
    confusion = np.array([[8, 2, 0],   # true 0: 8 right, 2 called class 1
                          [1, 3, 0],   # true 1
                          [0, 0, 0]])  # class 2 never appears
    metrics = classification_metrics(confusion, loss_sum=7.0)
    assert metrics["n"] == 14 and metrics["loss"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(11 / 14)
    assert metrics["per_class_accuracy"][:2] == pytest.approx([0.8, 0.75])
    assert np.isnan(metrics["per_class_accuracy"][2])  # no samples: not a fake 0
    assert metrics["precision"][:2] == pytest.approx([8 / 9, 3 / 5])
    assert metrics["f1"][0] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert metrics["per_class_correct"] == [8, 3, 0] and metrics["per_class_total"] == [10, 4, 0]


def test_macro_f1_leaves_out_a_class_absent_from_the_set():
    confusion = np.array([[8, 2, 0],
                          [1, 3, 0],
                          [0, 0, 0]])  # class 2: no images, never predicted
    metrics = classification_metrics(confusion, loss_sum=1.0)
    f1 = [2 * (8 / 9) * 0.8 / (8 / 9 + 0.8), 2 * 0.6 * 0.75 / (0.6 + 0.75)]
    assert np.isnan(metrics["f1"][2])
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / 2)  # the mean over the two classes present, not three
    predicted_only = classification_metrics(np.array([[3, 1], [0, 0]]), 1.0)  # class 1 predicted, never present
    assert predicted_only["macro_f1"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)


def test_expected_calibration_error_known_case():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])  # confidence-0.9 bin: 50% right; 0.6 bin: 100% right
    ece, table = expected_calibration_error(probabilities, labels, bins=10)
    assert ece == pytest.approx(0.5 * abs(0.9 - 0.5) + 0.5 * abs(0.6 - 1.0))
    assert sum(table["count"]) == 4


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_temperature_scaling_recovers_a_known_temperature_and_keeps_the_ranking(true_temperature):
    # labels drawn from softmax(z / T): a model reporting softmax(z) is over-confident (T = 2) or
    # under-confident (T = 0.5) by exactly T, which the fit must find and which must lower the ECE
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 6))
    reported_log = tempered_log_probabilities(logits, 1.0)  # log softmax
    reported = np.exp(reported_log)
    assert np.allclose(reported, torch.from_numpy(logits).softmax(1).numpy())
    truth = with_temperature(reported, true_temperature)
    assert np.allclose(truth, np.exp(tempered_log_probabilities(reported_log, true_temperature)))
    labels = np.array([rng.choice(6, p=row) for row in truth])
    fitted = fit_temperature(reported_log, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert fitted == pytest.approx(fit_temperature(reported_log, labels, prior_sd=None), rel=1e-3)  # prior: moot
    calibrated = np.exp(tempered_log_probabilities(reported_log, fitted))
    assert np.allclose(calibrated.sum(1), 1) and (calibrated.argmax(1) == reported.argmax(1)).all()
    assert expected_calibration_error(calibrated, labels)[0] < expected_calibration_error(reported, labels)[0] / 3
    assert fit_temperature(reported_log[:0], labels[:0]) == 1.0  # nothing to fit on: as trained
    # the same rescaling in the model's output, in log space
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6))
    mean, std = [0.5] * 3, [0.25] * 3
    plain = classifier_outputs(model, images, mean, std, flip_tta=True).exp().detach().numpy()
    scaled = classifier_outputs(model, images, mean, std, flip_tta=True, temperature=2.0).exp().detach().numpy()
    assert np.allclose(scaled, with_temperature(plain, 2.0), atol=1e-5)


def test_a_confident_models_loss_and_temperature_read_its_log_probabilities_not_underflowed_probabilities():
    """A model sure by hundreds of nats (a short or overfitted run): its other classes' probabilities are 0 in
    float32, their logarithms are not. The loss counts a confident mistake in full, and a temperature rescales
    the logarithms, as the model's own output divided by T does (predict and evaluate), not 0s clipped to 1e-30."""
    logits = torch.tensor([[300.0, 0.0, -100.0], [0.0, 250.0, 10.0]])
    log_probabilities = torch.log_softmax(logits, 1).numpy()
    assert (np.exp(log_probabilities.astype(np.float32))[:, 2] == 0).all()  # underflowed
    labels = np.array([2, 0])  # both wrong
    assert mean_negative_log_likelihood(log_probabilities, labels) == pytest.approx(
        F.cross_entropy(logits, torch.from_numpy(labels)).item(), rel=1e-6)  # 325 nats, not 69 (log 1e-30)
    tempered = np.exp(tempered_log_probabilities(log_probabilities, 20.0))
    assert np.allclose(tempered, torch.softmax(logits / 20.0, 1).numpy(), atol=1e-6)
    assert tempered[0, 1] == pytest.approx(np.exp(-15) / (1 + np.exp(-15) + np.exp(-20)), rel=1e-5)
    # fitted on such predictions, the temperature softens them (20, its bound), as their likelihood asks
    assert fit_temperature(log_probabilities, labels, prior_sd=None) == pytest.approx(20.0, rel=1e-3)


def _predictions_and_labels(rng, count: int, true_temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities a model reports for `count` images of 6 classes, and labels drawn from those probabilities
    at the true temperature (2: the model is over-confident, 0.5: under-confident, 1: calibrated)."""
    logits = rng.normal(0, 3, size=(count, 6))
    reported = tempered_log_probabilities(logits, 1.0)  # log softmax
    truth = np.exp(tempered_log_probabilities(reported, true_temperature))
    labels = (truth.cumsum(1) < rng.random((count, 1))).sum(1).clip(0, 5)
    return reported, labels


def test_a_temperature_fitted_on_few_images_is_held_near_one_and_does_better_on_fresh_ones():
    """Validation sets of 20 and 50 images from models calibrated, under- and over-confident: the temperature
    fitted with the prior on log T loses less on 20,000 fresh images than the plain fit, averaged over the
    settings, and never much more in any one (the plain fit often lands on an extreme T)."""
    rng = np.random.default_rng(3)
    with_prior, plain = [], []
    for true_temperature in (0.5, 0.7, 1.0, 1.5, 2.0):
        fresh, fresh_labels = _predictions_and_labels(rng, 20000, true_temperature)
        best = mean_negative_log_likelihood(tempered_log_probabilities(fresh, true_temperature), fresh_labels)
        for count in (20, 50):
            excess = {"prior": [], "plain": []}
            for _ in range(60):
                few, few_labels = _predictions_and_labels(rng, count, true_temperature)
                for name, prior_sd in (("prior", 0.5), ("plain", None)):
                    temperature = fit_temperature(few, few_labels, prior_sd=prior_sd)
                    excess[name].append(
                        mean_negative_log_likelihood(tempered_log_probabilities(fresh, temperature), fresh_labels)
                        - best)
            with_prior.append(np.mean(excess["prior"]))
            plain.append(np.mean(excess["plain"]))
    with_prior, plain = np.array(with_prior), np.array(plain)
    assert with_prior.mean() < 0.6 * plain.mean(), (with_prior, plain)
    assert (with_prior <= plain).sum() >= 7 and (with_prior < 1.3 * plain + 0.002).all(), (with_prior, plain)


def test_evaluate_classifier_equals_a_direct_computation(tiny_intel, cache_dir):
    listing = scan_labeled_folder(tiny_intel / "seg_test")
    stored = cached_beton("eval", listing.root, listing.files, listing.labels, listing.classes, 32,
                          cache_dir=cache_dir)
    indices = np.arange(stored.num_samples)
    loader = make_loader(stored, indices, 7, train=False, image_size=32, device=torch.device("cpu"),
                         num_workers=1)  # 36 images in batches of 7: the last batch is partial
    torch.manual_seed(0)
    model = SceneCNN(num_classes=6, width=4, image_size=32)
    model.train()  # evaluate must switch to eval mode itself and switch back
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    shard = Shard(loader, indices, np.arange(len(indices)), len(indices))
    metrics = evaluate_classifier(model, shard, accelerator, 6, (0.5,) * 3, (0.5,) * 3, keep_predictions=True)
    assert model.training

    images = torch.stack([torch.from_numpy(__import__("toolkit.data.images", fromlist=["x"]).load_rgb(f, 32))
                          for f in listing.files]).permute(0, 3, 1, 2)
    labels = torch.tensor(listing.labels)
    model.eval()
    with torch.no_grad():
        logits = model(normalize(images))
    assert metrics["n"] == 36
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert np.allclose(metrics["probabilities"], logits.softmax(1).numpy(), atol=1e-5)
    assert np.allclose(metrics["log_probabilities"], logits.log_softmax(1).numpy(), atol=1e-5)
    assert metrics["labels"].tolist() == listing.labels
