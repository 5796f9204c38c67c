"""sample.py on checkpoints of tiny fits, and the picture functions it shares with ImageGrids."""

from pathlib import Path

import pytest
import torch
from torchvision.io import read_image

import sample
from tests.helpers import run_cli
from vae.model import VAE
from vae.module import VAEModule
from vae.pictures import interpolation_grid, latent_scatter, manifold_grid, reconstruction_grid


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    """(height, width) of `make_grid` output: 28-pixel images with 2-pixel lines around each."""
    return 30 * rows + 2, 30 * cols + 2


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sample_py_writes_the_grids_into_the_checkpoints_run(copy_of_trained_run, data_dir):
    ckpt = copy_of_trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"  # latent_dim 4
    out = sample.main(["--ckpt_path", str(ckpt), "--data_dir", str(data_dir), "--n_samples", "16"])
    assert out == ckpt.parent.parent / "samples"
    names = ("prior", "reconstructions", "interpolations")
    sizes = {name: read_image(str(out / f"{name}.png")).shape for name in names}
    assert sizes == {
        "prior": (3, *grid_size(2, 8)),
        "reconstructions": (3, *grid_size(4, 8)),  # 2 rows of inputs, each above its reconstructions
        "interpolations": (3, *grid_size(sample.INTERPOLATION_ROWS, 10)),
    }
    assert not (out / "manifold.png").exists()  # only for a 2-D latent space


def test_sample_py_draws_the_manifold_and_scatter_of_a_2d_latent_space(in_tmp, data_dir, capsys):
    """Also: `last` finds the run, and the old spelling `--n` still works, with a one-line notice."""
    run_cli("fit", "--trainer.max_epochs", "1", "--model.latent_dim", "2", data_dir=data_dir)
    out = sample.main(["--ckpt_path", "last", "--data_dir", str(data_dir), "--n=8", "--out", "pics"])
    assert out == Path("pics")
    notes = capsys.readouterr().err.splitlines()
    assert "note: --n is now --n_samples; the old spelling goes in the next release." in notes
    assert read_image(str(out / "prior.png")).shape == (3, *grid_size(1, 8))
    assert read_image(str(out / "manifold.png")).shape == (3, *grid_size(20, 20))
    assert read_image(str(out / "latent_scatter.png")).shape == (3, 560, 560 + 56)


def test_module_api_sample_and_reconstruct(monkeypatch):
    module = VAEModule(hidden_dim=16, latent_dim=3)
    samples = module.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 28, 28)
    torch.testing.assert_close(samples, module.sample(5, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(samples, module.sample(5, generator=torch.Generator().manual_seed(1)))

    # reconstruct: pixel means, noise-free, i.e. what a training pass gives when its draw's noise is 0
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(0)
    first = module.reconstruct(x)
    torch.manual_seed(1)
    assert torch.equal(module.reconstruct(x), first)  # no random state involved
    assert first.shape == x.shape and ((first > 0) & (first < 1)).all()
    noisy_logits, _, _ = module(x)
    assert not torch.allclose(noisy_logits.sigmoid(), first)  # a training pass does draw noise
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    logits, _, _ = module(x)
    torch.testing.assert_close(first, logits.sigmoid())


def test_reconstruction_grid_keeps_inputs_above_their_reconstructions_in_a_short_last_row():
    model = VAE(hidden_dim=16, latent_dim=2)
    x = torch.rand(10, 1, 28, 28)
    grid = reconstruction_grid(model, x, nrow=8)
    assert grid.shape == (3, *grid_size(4, 8))

    def cell(row: int, col: int) -> torch.Tensor:
        return grid[0, 2 + 30 * row : 30 + 30 * row, 2 + 30 * col : 30 + 30 * col]

    torch.testing.assert_close(cell(2, 1), x[9, 0])  # the second row of inputs starts at x[8]
    torch.testing.assert_close(cell(3, 1), model.reconstruct(x[9:])[0, 0])
    assert cell(3, 2).abs().max() == 0  # padding, not the next image


def test_interpolation_rows_run_from_one_posterior_mean_to_the_other():
    model = VAE(hidden_dim=16, latent_dim=2)
    a, b = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    grid = interpolation_grid(model, a, b, steps=5)
    assert grid.shape == (3, *grid_size(3, 5))
    torch.testing.assert_close(grid[0, 2:30, 2:30], model.reconstruct(a[:1])[0, 0])
    torch.testing.assert_close(grid[0, 2:30, 4 * 30 + 2 : 5 * 30], model.reconstruct(b[:1])[0, 0])


def test_2d_pictures_refuse_other_latent_sizes():
    model = VAE(hidden_dim=16, latent_dim=3)
    with pytest.raises(ValueError, match="needs a top latent layer of 2, this model has 3"):
        manifold_grid(model)
    with pytest.raises(ValueError, match="latent_dim 2"):
        latent_scatter(model, torch.rand(4, 1, 28, 28), torch.arange(4))
