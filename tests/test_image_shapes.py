"""Images other than MNIST's 1 x 28 x 28, through every architecture, output and export.

Every architecture takes the data's shape (or refuses it in one line), and the shape and likelihood
travel into the checkpoint, the test metrics, the pictures, the projector's sprites and the export.
A tiny colour data set, 3 x 8 x 8, stands in for CIFAR-10.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset
from torchvision.io import read_image

import export
from vae.callbacks import ImageGrids, LatentProjector
from vae.elbo import LIKELIHOODS, negative_elbo
from vae.model import VAE
from vae.module import VAEModule
from vae.pictures import PALETTE, latent_scatter, manifold_grid, traversal_grid

RGB = (3, 8, 8)


class ColourImages(LightningDataModule):
    """Random 8-bit colour images held as uint8, served as float (B, C, H, W) in [0, 1], as the
    project's data modules serve theirs; `image_shape` and `pixel_mean` as they expose them."""

    def __init__(self, image_shape: tuple[int, int, int] = RGB, n: int = 48) -> None:
        super().__init__()
        self.image_shape = image_shape
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, *image_shape), generator=g, dtype=torch.uint8)
        labels = torch.arange(n) % 10
        self.train_set = self.val_set = self.test_set = SimpleNamespace(images=images, labels=labels)

    def pixel_mean(self) -> torch.Tensor:
        return self.train_set.images.float().mean(0) / 255

    def _loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.train_set.images, self.train_set.labels), batch_size=16)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return images.float() / 255, labels


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("arch, shape", [("mlp", (3, 5, 7)), ("conv", (3, 8, 12)), ("resnet", (3, 8, 12))])
def test_every_architecture_follows_the_image_shape(arch, shape, likelihood):
    model = VAE(hidden_dim=16, latent_dim=3, arch=arch, image_shape=shape, likelihood=likelihood)
    x = torch.randint(0, 256, (4, *shape)) / 255
    output, mu, logvar = model(x)
    per_channel = LIKELIHOODS[likelihood].outputs_per_channel
    assert output.shape == (4, per_channel * shape[0], *shape[1:]) and mu.shape == logvar.shape == (4, 3)
    loss, _, _ = negative_elbo(output, x, mu, logvar, model.likelihood.log_likelihood)
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    for images in (model.sample(2), model.reconstruct(x)):
        assert images.shape == (len(images), *shape) and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_the_output_bias_starts_the_decoder_at_the_colour_images_marginal(likelihood):
    """With the decoder's weights at zero, p(x|z) is the start for every z. Bernoulli: its means are
    the pixel means exactly. Logistic: centred on them, it fits the data far better than the untrained
    output does (log-scale 0: a scale as wide as the whole range)."""
    data = ColourImages(n=256)
    x, pixel_mean = data.train_set.images.float() / 255, data.pixel_mean()
    model = VAE(hidden_dim=16, latent_dim=2, arch="conv", image_shape=RGB, likelihood=likelihood)
    with torch.no_grad():
        model.decoder[-2].weight.zero_()  # the last transposed convolution contributes nothing
    before = -model.likelihood.log_likelihood(model.decode(torch.zeros(len(x), 2)), x).mean()
    model.init_output_bias(pixel_mean)
    after = -model.likelihood.log_likelihood(model.decode(torch.zeros(len(x), 2)), x).mean()
    if likelihood == "bernoulli":
        torch.testing.assert_close(model.sample(2), pixel_mean.expand(2, *RGB))
    else:
        torch.testing.assert_close(model.decode(torch.zeros(1, 2))[0, :3], pixel_mean)
        assert after < before - 0.5 * math.prod(RGB)  # half a nat per sub-pixel better, at least


@pytest.mark.parametrize("arch", ["conv", "resnet"])
def test_the_convolutional_architectures_refuse_sides_not_divisible_by_4_in_one_line(arch):
    with pytest.raises(ValueError) as error:
        VAE(hidden_dim=16, latent_dim=2, arch=arch, image_shape=(3, 30, 30))
    message = str(error.value)
    assert f"--model.arch {arch}" in message and "30x30" in message and "divisible by 4" in message
    assert "--model.arch mlp" in message and "\n" not in message
    VAE(hidden_dim=16, latent_dim=2, arch="mlp", image_shape=(3, 30, 30))  # the MLP takes any size


def test_a_malformed_shape_is_one_line_naming_the_option():
    """(An unknown likelihood is the parser's to refuse: tests/test_model.py.)"""
    with pytest.raises(ValueError) as error:
        VAEModule(hidden_dim=16, latent_dim=2, image_shape=(28, 28))
    assert str(error.value).startswith("--model.image_shape") and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory) -> SimpleNamespace:
    """A logistic conv VAE fitted for 2 steps and tested on ColourImages by a hand-built Trainer, with
    the picture and projector callbacks, trained once for this file."""
    root = tmp_path_factory.mktemp("colour")
    torch.manual_seed(0)
    module = VAEModule(hidden_dim=16, latent_dim=2, arch="conv", image_shape=RGB, likelihood="logistic", iw_samples=3)
    grids = ImageGrids(n_reconstructions=8, n_interpolations=2, n_samples=8)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=TensorBoardLogger(root, name="", version=0),
        callbacks=[grids, LatentProjector(n_images=16)], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    data = ColourImages()
    trainer.fit(module, data)
    checkpoint = root / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    metrics = {k: float(v) for k, v in trainer.test(module, data, verbose=False)[0].items()}
    return SimpleNamespace(run=root / "version_0", checkpoint=checkpoint, metrics=metrics)


def test_the_shape_and_likelihood_are_saved_in_the_checkpoint_and_a_loaded_model_draws_colour_images(colour_run):
    saved = torch.load(colour_run.checkpoint, weights_only=True)["hyper_parameters"]
    assert tuple(saved["image_shape"]) == RGB and saved["likelihood"] == "logistic"
    module = VAEModule.load_from_checkpoint(colour_run.checkpoint, map_location="cpu", weights_only=True)
    samples = module.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, *RGB) and 0 <= samples.min() and samples.max() <= 1


def test_the_test_nll_of_8_bit_images_is_in_nats_and_in_bits_per_dimension(colour_run):
    m = colour_run.metrics
    assert m["test/nll_bpd"] == pytest.approx(m["test/nll"] / (math.prod(RGB) * math.log(2)), rel=1e-6)
    # a discrete likelihood: -log p(x) >= 0, and the importance-weighted bound is below the ELBO's
    assert 0 < m["test/nll"] <= m["test/loss"] + 1e-3


def test_predict_scores_each_colour_image_as_test_does_under_the_runs_likelihood(colour_run):
    """predict's per-image scores (what report.py ranks images by) average to test's numbers."""
    module = VAEModule.load_from_checkpoint(colour_run.checkpoint, map_location="cpu", weights_only=True)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    torch.manual_seed(1)
    tested = trainer.test(module, ColourImages(), verbose=False)[0]
    torch.manual_seed(1)  # the same k = 3 samples per image
    predicted = trainer.predict(module, ColourImages())
    for name in ("loss", "nll"):
        per_image = torch.cat([batch[name] for batch in predicted])
        assert per_image.shape == (48,)
        assert per_image.mean().item() == pytest.approx(tested[f"test/{name}"], rel=1e-5), name


def test_the_run_draws_colour_grids_and_colour_projector_sprites(colour_run):
    reconstructions = read_image(str(colour_run.run / "images/reconstructions-epoch000.png"))
    assert reconstructions.shape == (3, 2 * 10 + 2, 8 * 10 + 2)  # 8 inputs above their 8 reconstructions
    inputs = reconstructions[:, 2:10, 2:10]  # the first input image, as drawn
    assert (inputs[0] != inputs[1]).any()  # colour, not grey
    for kind in ("interpolations", "prior"):
        assert read_image(str(colour_run.run / f"images/{kind}-epoch000.png")).shape[0] == 3
    (sprite,) = colour_run.run.glob("*/test*posterior_means/sprite.png")
    sprite = read_image(str(sprite))
    assert sprite.shape[0] == 3 and (sprite[0] != sprite[1]).any()


def test_the_export_records_the_shape_and_likelihood_and_outputs_what_the_decoder_outputs(colour_run, tmp_path):
    out = export.main(["--ckpt_path", str(colour_run.checkpoint), "--out", str(tmp_path / "export")])
    about = json.loads((out / "export.json").read_text())
    assert about["image_shape"] == list(RGB) and about["likelihood"] == "logistic"
    assert "(B, 2C, H, W)" in about["decoder_output"]
    encoder = torch.export.load(str(out / "encoder.pt2")).module()
    decoder = torch.export.load(str(out / "decoder.pt2")).module()
    model = VAEModule.load_from_checkpoint(colour_run.checkpoint, map_location="cpu", weights_only=True).model.eval()
    x, z = torch.rand(5, *RGB), torch.randn(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)[0], model.encode(x)[0])
        assert decoder(z).shape == (3, 6, 8, 8)
        torch.testing.assert_close(decoder(z), model.decode(z))


def test_data_of_another_shape_than_the_models_is_refused_in_one_line(colour_run):
    module = VAEModule.load_from_checkpoint(colour_run.checkpoint, map_location="cpu", weights_only=True)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(ValueError) as error:
        trainer.test(module, ColourImages(image_shape=(1, 8, 8)), verbose=False)
    message = str(error.value)
    assert "1x8x8" in message and "3x8x8" in message and "\n" not in message


def test_the_latent_pictures_of_colour_images():
    model = VAE(hidden_dim=16, latent_dim=2, image_shape=RGB, likelihood="logistic")
    assert manifold_grid(model, n=4).shape == (3, 4 * 10 + 2, 4 * 10 + 2)
    # report.py's traversals: pixel means, one RGB cell per value (not the decoder's 6 output channels)
    traversal = traversal_grid(model, [1, 0], torch.linspace(-3, 3, 5))
    assert traversal.shape == (3, 2 * 10 + 2, 5 * 10 + 2) and 0 <= traversal.min() and traversal.max() <= 1
    red = torch.zeros(6, *RGB)
    red[:, 0] = 1.0
    scatter = latent_scatter(model, red, torch.tensor([0, 0, 0, 12, 12, 12]), size=100)  # labels beyond ten
    tile = scatter[:, :10, 100:]  # label 0's: the mean image itself, not tinted, framed in the label's colour
    torch.testing.assert_close(tile[:, 2:8, 2:8].mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(tile[:, 0, 0], PALETTE[0])
