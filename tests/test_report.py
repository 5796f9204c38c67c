"""report.py: each measurement against a case whose answer is known, and the page in a real browser.

One report is made once for the file (`report`), on the shared tiny run, with the test images themselves as
the out-of-distribution set: the likelihood cannot tell a set from itself, so its AUROC is about 0.5.
"""

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import report as report_py
from tests.conftest import TEST_SIZE, make_hermetic, synthetic_mnist
from vae.feature_net import Classifier, cached_classifier
from vae.report_metrics import auroc, class_evenness, frechet_distance, knn_accuracy, linear_probe_accuracy

IW_SAMPLES = 10
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_mnist(n, seed)
    return images.unsqueeze(1).float() / 255, labels.long()


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
            + ["--ood", "MNISTDataModule", "--ood_option", f"data_dir={data_dir}", "--ood_option", "val_size=64"]
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
    # the same images as "out of distribution": the likelihood cannot tell them apart
    assert abs(likelihood["ood_auroc"] - 0.5) < 0.05
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
    with pytest.raises(SystemExit, match="'NoSuchDataModule' is not a data module"):
        report_py.main(["--ckpt_path", str(ckpt), "--ood", "NoSuchDataModule", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
