"""vae/model.py's networks: shapes, defaults, reparameterisation, output bias, and the option values."""

from typing import get_args

import pytest
import torch

from tests.helpers import run_cli
from vae.cli import VAECLI
from vae.elbo import LIKELIHOODS, LikelihoodName
from vae.model import ARCHITECTURES, VAE, Architecture


def test_shapes_follow_hidden_and_latent_dims():
    model = VAE(hidden_dim=64, latent_dim=7)
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 7)
    assert model.decode(mu).shape == (5, 1, 28, 28)
    logits, mu2, logvar2 = model(x)
    assert logits.shape == (5, 1, 28, 28) and mu2.shape == (5, 7)
    assert model.encoder[1].out_features == 64


def test_default_is_the_classic_784_512_20_network():
    model = VAE()
    assert (model.encoder[1].in_features, model.encoder[1].out_features, model.latent_dim) == (784, 512, 20)
    encoder = 784 * 512 + 512 + 2 * (512 * 20 + 20)
    decoder = 20 * 512 + 512 + 512 * 784 + 784
    assert sum(p.numel() for p in model.parameters()) == encoder + decoder


def test_reparameterisation_is_differentiable_and_follows_q():
    mu = torch.full((20000, 2), 3.0, requires_grad=True)
    logvar = torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z = VAE.reparameterize(mu, logvar)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert abs(z.mean().item() - 3.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02


def test_sample_gives_pixel_means_and_is_reproducible_with_a_generator():
    model = VAE(hidden_dim=32, latent_dim=4)
    a = model.sample(6, generator=torch.Generator().manual_seed(0))
    b = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert a.shape == (6, 1, 28, 28) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b)


def test_output_bias_starts_at_the_pixel_means():
    model = VAE(hidden_dim=16, latent_dim=2)
    pixel_mean = torch.rand(1, 28, 28) * 0.9 + 0.05
    model.init_output_bias(pixel_mean)
    with torch.no_grad():
        for layer in (model.decoder[0], model.decoder[2]):
            layer.weight.zero_()
    torch.testing.assert_close(model.sample(3), pixel_mean.expand(3, 1, 28, 28))


def test_the_conv_architecture_has_the_same_interface():
    model = VAE(hidden_dim=32, latent_dim=3, arch="conv")
    x = torch.rand(4, 1, 28, 28)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (4, 3)
    assert model.sample(2).shape == (2, 1, 28, 28) and model.reconstruct(x).shape == x.shape
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.encoder)


def test_conv_output_bias_starts_at_the_pixel_means():
    model = VAE(hidden_dim=16, latent_dim=2, arch="conv")
    pixel_mean = torch.rand(1, 28, 28) * 0.9 + 0.05
    model.init_output_bias(pixel_mean)
    with torch.no_grad():
        model.decoder[-2].weight.zero_()  # the last transposed convolution contributes nothing
    torch.testing.assert_close(model.sample(2), pixel_mean.expand(2, 1, 28, 28))


def test_the_accepted_names_are_the_networks_and_likelihoods_there_are():
    """`--model.arch` and `--model.likelihood` accept exactly the names their tables hold: neither drifts."""
    assert get_args(Architecture) == tuple(ARCHITECTURES)
    assert get_args(LikelihoodName) == tuple(LIKELIHOODS)


CHOICES = {
    "arch": ("mlp", "conv", "resnet"),
    "likelihood": ("bernoulli", "logistic", "logistic_shared_scale"),
    "lr_schedule": ("constant", "cosine"),
    "compile": ("default", "reduce-overhead", "max-autotune"),
    "matmul_precision": ("highest", "high", "medium"),
}


def test_help_lists_the_values_of_every_model_option_with_a_fixed_set(capsys):
    with pytest.raises(SystemExit) as exit_:
        VAECLI(args=["fit", "--help"])
    assert exit_.value.code in (0, None)
    help_text = "".join(capsys.readouterr().out.split())  # without the line breaks of its wrapping
    for option, values in CHOICES.items():
        assert f"--model.{option}" in help_text
        assert "{" + ",".join(values) + "}" in help_text or all(f"'{v}'" in help_text for v in values), option


@pytest.mark.parametrize("option", sorted(CHOICES))
def test_a_value_not_in_the_set_stops_with_the_parsers_one_line_and_no_run(tmp_path, monkeypatch, data_dir, option):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", f"--model.{option}", "foo", data_dir=data_dir)
    message = str(exit_.value.code)
    assert message.startswith(f"error: --model.{option} foo: not a value this option accepts.") and "\n" not in message
    assert message.endswith("--help` lists the options and their values.")
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_output_bias_layer_is_held_by_reference_without_changing_the_checkpoint_keys(arch):
    model = VAE(hidden_dim=16, latent_dim=2, arch=arch)
    assert any(layer is model.output_layer for layer in model.decoder)
    assert not any(key.startswith("output_layer") for key in model.state_dict())  # its weights are saved once
    pixel_mean = torch.rand(1, 28, 28) * 0.9 + 0.05
    model.init_output_bias(pixel_mean)
    torch.testing.assert_close(torch.sigmoid(model.output_layer.bias).reshape(1, 28, 28), pixel_mean)
