"""report.py: each measurement and section's wiring against a case whose answer is known; the page.

The page is checked in a real browser.

One report is made once for the file (`report`), on the shared tiny run, with pure noise as the
out-of-distribution set: every noise image is less likely than every test image, so its AUROC is 1.
"""

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningDataModule
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import report as report_py
from tests.helpers import TEST_SIZE, make_hermetic, synthetic_mnist
from vae.model import VAE
from vae.report.features import Classifier, cached_classifier
from vae.report.latents import latents, spread_over_classes
from vae.report.likelihood import OutOfDistribution, likelihood
from vae.report.metrics import auroc, class_evenness, frechet_distance, knn_accuracy, linear_probe_accuracy
from vae.report.samples import sample_quality

IW_SAMPLES = 10
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_mnist(n, seed)
    return images.unsqueeze(1).float() / 255, labels.long()


class NoiseDataModule(LightningDataModule):
    """Pure noise, uniform bytes in MNIST's shape: a set a model of the synthetic bars finds less likely,
    image by image, than any of its test images. Named to report.py by its full class path."""

    def __init__(self, data_dir: str = "data", n: int = 96, batch_size: int = 32) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def setup(self, stage: str) -> None:
        noise = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (self.n, 1, 28, 28), dtype=torch.uint8, generator=noise)
        self.test_set = SimpleNamespace(images=images, labels=torch.zeros(self.n, dtype=torch.long))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return images.float() / 255, labels


def untrained_classifier(scale: float = 30) -> Classifier:
    """A fixed feature map whose features are large enough for distances that survive the report's rounding
    to 2 decimals (an untrained network's are tiny): its feature layer scaled by `scale`."""
    torch.manual_seed(0)
    classifier = Classifier(1, 10).eval()
    with torch.no_grad():
        classifier.body[-2].weight *= scale
        classifier.body[-2].bias *= scale
    return classifier


def frechet_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    """|m_a - m_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of features (N, d), in float64, written out:
    Tr (S_a S_b)^(1/2) is the sum of the square roots of S_a S_b's eigenvalues."""
    a, b = a.double(), b.double()
    s_a, s_b = a.T.cov(), b.T.cov()
    root = torch.linalg.eigvals(s_a @ s_b).real.clamp_min(0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * root)


def test_the_frechet_distance_is_the_formula_on_the_classifiers_features_and_the_floor_on_two_halves():
    """Not on its logits, not the square root; the floor from two disjoint halves of the test images drawn
    from the seed, rescaled from N/2 vs N/2 images to the score's N vs N (a factor 1/2)."""
    classifier = untrained_classifier()
    x_test, labels = synthetic_images(400, seed=5)
    samples, _ = synthetic_images(400, seed=6)
    samples = (samples + 0.3 * torch.rand(samples.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    numbers = sample_quality(samples, x_test, labels, classifier, seed=7).numbers
    with torch.no_grad():
        expected = frechet_by_hand(classifier.body(x_test), classifier.body(samples))
        on_logits = frechet_by_hand(classifier(x_test), classifier(samples))
        first, second = torch.randperm(400, generator=torch.Generator().manual_seed(7)).chunk(2)
        halves = frechet_by_hand(classifier.body(x_test[first]), classifier.body(x_test[second]))
    assert numbers["frechet_distance"] == pytest.approx(expected, abs=0.02)
    assert abs(on_logits - expected) > 1 and abs(expected**0.5 - expected) > 1  # the check tells them apart
    assert numbers["frechet_floor"] == pytest.approx(halves / 2, abs=0.01) and halves > 0.2


def test_the_floor_is_what_samples_from_the_test_images_own_distribution_score():
    """A "model" whose samples are new images of the test set's distribution scores about the floor (the
    distance between halves, unscaled, is twice that: an estimate from fewer images is biased upwards)."""
    classifier = untrained_classifier(scale=300)
    scores, floors = [], []
    for seed in range(5):
        x_test, labels = synthetic_images(600, seed=10 + seed)
        real_samples, _ = synthetic_images(600, seed=20 + seed)
        numbers = sample_quality(real_samples, x_test, labels, classifier, seed=seed).numbers
        scores.append(numbers["frechet_distance"])
        floors.append(numbers["frechet_floor"])
    assert 0.75 < sum(scores) / sum(floors) < 1.5, (scores, floors)  # 1.12; the halves' distance: 0.56


def test_the_latent_probes_are_fitted_on_the_training_latents_and_scored_on_the_test_latents():
    """Training latents put class 0 left and class 1 right; test latents the other way round: fitted on the
    training latents, every test point is misclassified (accuracy 0; fitted on the test latents it would be 1).
    Then test latents all of class 1 at +0.5 and +1.5: standardised with the training latents' mean and
    spread they all lie right (accuracy 1), standardised with their own, half would lie left."""
    g = torch.Generator().manual_seed(0)
    model = VAE(hidden_dim=16, latent_dim=2)
    train_y = torch.arange(200) % 2
    train_mu = torch.stack([2.0 * train_y - 1, torch.zeros(200)], 1) + 0.1 * torch.randn(200, 2, generator=g)
    x_test, test_y = torch.rand(100, 1, 28, 28, generator=g), torch.arange(100) % 2
    reversed_mu = torch.stack([1 - 2.0 * test_y, torch.zeros(100)], 1) + 0.1 * torch.randn(100, 2, generator=g)
    logvar = torch.zeros(100, 2)
    numbers = latents(model, reversed_mu, logvar, x_test, test_y, train_mu, train_y).numbers
    assert numbers["linear_probe_accuracy"] == 0.0 and numbers["knn_accuracy"] == 0.0
    ones = torch.ones(100, dtype=torch.long)
    right = torch.stack([0.5 + (torch.arange(100) % 2).float(), torch.zeros(100)], 1)
    assert latents(model, right, logvar, x_test, ones, train_mu, train_y).numbers["linear_probe_accuracy"] == 1.0


def test_the_ood_auroc_scores_the_second_sets_own_nll_as_the_positives():
    nll = 100 + torch.rand(50, generator=torch.Generator().manual_seed(0))
    x = torch.rand(50, 1, 28, 28)
    unlikely = OutOfDistribution("noise", nll + 500, x[:8], nll[:8] + 500)
    numbers = likelihood(nll + 1, nll, x, 10, unlikely).numbers
    assert numbers["ood_auroc"] == 1.0 and numbers["ood_nll"] == pytest.approx(float(nll.mean()) + 500, abs=0.01)
    preferred = OutOfDistribution("digits", nll - 500, x[:8], nll[:8] - 500)
    assert likelihood(nll + 1, nll, x, 10, preferred).numbers["ood_auroc"] == 0.0


def test_the_pictures_images_are_drawn_at_random_and_from_every_class():
    """A test set sorted by class (the first 64 images all zeros) still shows every class, evenly."""
    sorted_labels = torch.arange(10).repeat_interleave(40)
    chosen = spread_over_classes(sorted_labels, 32, seed=0)
    counts = torch.bincount(sorted_labels[chosen], minlength=10)
    assert len(set(chosen.tolist())) == 32 and counts.min() == 3 and counts.max() == 4
    assert torch.equal(chosen, spread_over_classes(sorted_labels, 32, seed=0))
    assert not torch.equal(chosen, spread_over_classes(sorted_labels, 32, seed=1))
    unlabelled = spread_over_classes(torch.full((400,), -1), 32, seed=0)
    assert len(set(unlabelled.tolist())) == 32 and unlabelled.max() > 64


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_as_the_images_are_corrupted():
    torch.manual_seed(0)
    features = Classifier(1, 10).body  # untrained: any fixed feature map will do
    x, _ = synthetic_images(300, seed=3)
    assert abs(frechet_distance(features, x, x)) < 1e-4
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    distances = [frechet_distance(features, x, (1 - a) * x + a * noise) for a in (0.05, 0.2, 0.5)]
    assert distances[0] > 1e-4 and distances == sorted(distances), distances


def test_probes_score_1_on_separable_latents_and_chance_on_unrelated_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=g)
    centres = 4 * torch.randn(10, 8, generator=g)
    z = centres[labels] + 0.3 * torch.randn(2000, 8, generator=g)
    train, test = slice(0, 1500), slice(1500, None)
    assert linear_probe_accuracy(z[train], labels[train], z[test], labels[test]) == 1.0
    assert knn_accuracy(z[train], labels[train], z[test], labels[test]) == 1.0
    unrelated = torch.randint(0, 10, (2000,), generator=g)
    assert linear_probe_accuracy(z[train], unrelated[train], z[test], unrelated[test]) < 0.2
    assert knn_accuracy(z[train], unrelated[train], z[test], unrelated[test]) < 0.2


def test_auroc_is_one_half_for_the_same_scores_and_says_which_way_they_differ():
    scores = torch.randn(500, generator=torch.Generator().manual_seed(0))
    assert auroc(scores, scores) == 0.5
    assert auroc(scores, scores + 10) == 1.0  # every second-set item scores higher
    assert auroc(scores, scores - 10) == 0.0
    # NLLs in nats: hundreds (a sigmoid of such scores, taken as logits, would tie them all at 1)
    nll = 100 + 20 * scores
    assert auroc(nll, nll + 800) == 1.0
    assert auroc(nll, nll.flip(0) + 1) == pytest.approx(0.5, abs=0.05)


def test_class_evenness():
    assert class_evenness(torch.tensor([7, 7, 7, 7])) == pytest.approx(1.0)
    assert class_evenness(torch.tensor([0, 28, 0, 0])) == pytest.approx(0.0, abs=1e-12)


def test_the_classifier_is_trained_once_then_read_from_its_cache(tmp_path):
    images, labels = synthetic_mnist(200, seed=4)

    def to_float(b):
        return b.unsqueeze(1).float() / 255

    first, path, trained = cached_classifier(tmp_path, images, labels, to_float, epochs=1)
    again, same_path, trained_again = cached_classifier(tmp_path, images, labels, to_float, epochs=1)
    assert trained and not trained_again and path == same_path
    x = to_float(images[:8])
    torch.testing.assert_close(first(x), again(x))
    _, other_path, _ = cached_classifier(tmp_path, images.flip(0), labels.flip(0), to_float, epochs=1)
    assert other_path != path  # other training data: another classifier


@pytest.fixture(scope="module")
def report(trained_run: Path, tmp_path_factory, files) -> SimpleNamespace:
    """The report of trained_run's checkpoint (copied), made once: n_samples = the test set, k = 10."""
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(trained_run / "lightning_logs", root / "lightning_logs")
    run = root / "lightning_logs/version_0"
    data_dir = trained_run / "data"
    with pytest.MonkeyPatch.context() as patch:
        make_hermetic(patch, files)
        out = report_py.main(
            ["--ckpt_path", str(run / "checkpoints/last.ckpt"), "--data_dir", str(data_dir)]
            + ["--iw_samples", str(IW_SAMPLES), "--classifier_dir", str(root / "classifiers")]
            + ["--ood", f"{NoiseDataModule.__module__}.NoiseDataModule", "--ood_option", "n=64"]
        )
    record = json.loads((out / "report.json").read_text())
    return SimpleNamespace(out=out, run=run, record=record)


def test_the_report_holds_every_measurement_and_its_per_image_scores(report):
    r = report.record
    assert report.out == report.run / "report"
    quality, latents, likelihood = r["sample_quality"], r["latents"], r["likelihood"]
    assert quality["n_samples"] == TEST_SIZE and sum(quality["sample_class_counts"]) == TEST_SIZE
    assert quality["frechet_distance"] > 0 and quality["frechet_floor"] >= 0
    assert 0 <= quality["classifier_test_accuracy"] <= 1 and 0 <= latents["knn_accuracy"] <= 1
    assert len(latents["kl_per_dim"]) == latents["latent_dim"] == 4
    predictions = torch.load(report.out / "predictions.pt", weights_only=True)
    assert set(predictions) == {"mu", "logvar", "label", "loss", "nll", "index", "ood_loss", "ood_nll"}
    assert likelihood["test_nll"] == round(float(predictions["nll"].mean()), 2)
    assert predictions["nll"].mean() < predictions["loss"].mean()  # the k-sample bound is tighter than the ELBO
    assert likelihood["iw_samples"] == IW_SAMPLES
    # pure noise as "out of distribution": every noise image is less likely than every test image
    assert likelihood["ood_auroc"] == 1.0 and likelihood["ood_images"] == 64
    assert likelihood["ood_nll"] == round(float(predictions["ood_nll"].mean()), 2) > likelihood["test_nll"]
    assert r["run"]["global_step"] == 3 and r["run"]["commit"]
    names = {p.name for p in report.out.glob("*.png")}
    assert {"prior.png", "reconstructions.png", "most_likely.png", "least_likely.png"} <= names
    assert {"posterior_means.png", "ood_most_likely.png"} <= names


def test_the_reports_scalars_and_pictures_reach_the_runs_tensorboard_at_the_checkpoints_step(report):
    events = EventAccumulator(str(report.run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    nll = events.Scalars("report/likelihood/test_nll")
    assert [(e.step, round(e.value, 2)) for e in nll] == [(3, report.record["likelihood"]["test_nll"])]
    assert "report/prior" in events.Tags()["images"]


@pytest.mark.skipif(BROWSER is None, reason="no chromium (.ci/run installs the Debian package)")
def test_the_page_loads_in_a_browser_with_every_image_and_every_number(report, tmp_path):
    """Headless Chromium opens a copy of the page with a script that lists each image's load state."""
    probe = report.out / "browser-check.html"
    script = (
        "<script>addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'images';"
        "p.textContent = JSON.stringify([...document.images].map(i => [i.getAttribute('src'), i.complete &&"
        " i.naturalWidth > 0])); document.body.append(p); });</script>"
    )
    probe.write_text((report.out / "index.html").read_text().replace("</body>", script + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run([BROWSER, *flags, probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
    probe.unlink()
    images = json.loads(dom.split('<pre id="images">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert {src for src, _ in images} == {p.name for p in report.out.glob("*.png")}  # every picture is shown
    assert all(loaded for _, loaded in images), images

    def numbers(value):
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []

    missing = [n for n in numbers(report.record) if json.dumps(n) not in dom]
    assert not missing, missing


def test_a_bad_checkpoint_or_data_source_stops_with_one_line_and_writes_nothing(trained_run, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        report_py.main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "r")])
    ckpt = trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"
    with pytest.raises(SystemExit, match="'NoSuchDataModule' is not a data source"):
        report_py.main(["--ckpt_path", str(ckpt), "--ood", "NoSuchDataModule", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
