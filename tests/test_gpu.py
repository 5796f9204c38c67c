"""On a CUDA GPU: training, exact resume, test, sampling and the loss's estimators, as a GPU user runs them.

Skipped without CUDA (CI is CPU-only); `bench/gpu.sh` runs them with `pytest -m gpu`. Where the
code they exercise can run on a CPU, tests elsewhere run it there too (test_data.py for data on
the device, test_nonfinite_loss.py for the deferred NaN check, test_random_states.py for the
per-rank random states).

Bit-identical resume on a GPU needs deterministic cuBLAS: bench/gpu.sh sets
CUBLAS_WORKSPACE_CONFIG=:4096:8 before the process starts (it cannot be set later).
"""

import json
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.precision import Precision

import sample
from tests.helpers import fit_in_a_new_folder, run_cli
from tests.test_data import is_binary
from tests.test_resume_exact import final_state, train
from tests.test_sources import FOLDER_RUN, write_folder
from vae.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from vae.data import InMemoryImages, MNISTDataModule
from vae.elbo import importance_weighted_nll
from vae.model import VAE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ("--trainer.accelerator", "gpu", "--trainer.devices", "1")
PROJECT_CODE = str(Path(__file__).resolve().parents[1] / "vae")


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, files):
    """A tiny fit on the GPU, shared by the tests that only need a GPU-trained run: (the CLI, its last.ckpt)."""
    tmp, cli = fit_in_a_new_folder(tmp_path_factory, files, "gpu_run", "--trainer.max_epochs", "1", *GPU)
    return cli, tmp / "lightning_logs/version_0/checkpoints/last.ckpt"


def states_equal(a: dict, b: dict) -> bool:
    weights = all(torch.equal(a["state_dict"][key], b["state_dict"][key]) for key in a["state_dict"])
    adam_a, adam_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    moments = all(torch.equal(value, adam_b[index][name]) for index, s in adam_a.items() for name, value in s.items())
    return weights and moments and (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])


def test_a_gpu_fit_keeps_the_data_on_the_gpu_and_saves_the_gpus_random_state(gpu_run):
    cli, ckpt = gpu_run
    for dataset in (cli.datamodule.train_set, cli.datamodule.val_set, cli.datamodule.test_set):
        assert dataset.images.is_cuda and dataset.labels.is_cuda
    (rank,) = torch.load(ckpt, weights_only=True)["rng_states"]["ranks"]
    assert set(rank) == {"torch", "cuda"}


def test_a_gpu_run_resumed_after_a_crash_is_bit_identical(tmp_path, monkeypatch, data_dir):
    train(tmp_path / "a", monkeypatch, data_dir, *GPU)
    train(tmp_path / "a2", monkeypatch, data_dir, *GPU)
    uninterrupted = final_state(tmp_path / "a")
    assert states_equal(uninterrupted, final_state(tmp_path / "a2")), (
        "two uninterrupted GPU runs differ: the GPU libraries are not deterministic here "
        "(is CUBLAS_WORKSPACE_CONFIG=:4096:8 set?), so resume cannot be bit-identical"
    )
    crash = ("--trainer.callbacks+=tests.test_resume_exact.CrashAtStep", "--trainer.callbacks.init_args.step=18")
    with pytest.raises(RuntimeError, match="simulated crash at step 18"):
        train(tmp_path / "b", monkeypatch, data_dir, *GPU, *crash)
    train(tmp_path / "b", monkeypatch, data_dir, *GPU, "--ckpt_path", "last")
    assert states_equal(uninterrupted, final_state(tmp_path / "b"))


def test_test_on_a_gpu_reports_the_importance_weighted_nll(gpu_run, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, ckpt = gpu_run
    run_cli("test", "--ckpt_path", str(ckpt), "--model.iw_samples", "20", *GPU, data_dir=data_dir)
    metrics = json.loads((ckpt.parent.parent / "test_metrics.json").read_text())["metrics"]
    assert 0 < metrics["test/nll"] < metrics["test/loss"] + 1  # a tighter bound than the ELBO, up to noise


def test_sample_py_draws_from_a_gpu_trained_checkpoint(gpu_run, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, ckpt = gpu_run
    out = sample.main(["--ckpt_path", str(ckpt), "--data_dir", str(data_dir), "--n", "8"])
    assert all((out / f"{name}.png").stat().st_size > 0 for name in ("prior", "reconstructions", "interpolations"))


def test_a_colour_folder_trains_tests_and_predicts_on_the_gpu_under_the_logistic_likelihood(
    tmp_path, monkeypatch, data_dir
):
    """Beyond MNIST: RGB images from a folder, a conv network, the discretised logistic likelihood."""
    write_folder(tmp_path / "images", {"train": 30, "test": 6})
    monkeypatch.chdir(tmp_path)
    source = ("--data.root", str(tmp_path / "images"), "--model.arch", "conv", *GPU)
    cli = run_cli("fit", *FOLDER_RUN, *source, data_dir=data_dir)
    assert cli.datamodule.train_set.images.is_cuda and cli.datamodule.image_shape == (3, 8, 8)
    evaluate = ("--ckpt_path", "last", "--model.iw_samples", "4", "--data.val_size", "10", *GPU)
    metrics = run_cli("test", *evaluate, data_dir=data_dir).trainer.callback_metrics
    assert 0 < metrics["test/nll_bpd"].item() < 16 and metrics["test/nll"] <= metrics["test/loss"] + 1
    run_cli("predict", *evaluate, data_dir=data_dir)
    predictions = torch.load(tmp_path / "lightning_logs/version_0/predictions.pt", weights_only=True)
    assert predictions["nll"].shape == (12,) and predictions["nll"].isfinite().all()


def test_a_cpu_generator_drives_a_gpu_model_and_gives_the_cpus_numbers():
    torch.manual_seed(0)
    model = VAE(hidden_dim=32, latent_dim=4).eval()
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.3))
    on_gpu = VAE(hidden_dim=32, latent_dim=4).eval()
    on_gpu.load_state_dict(model.state_dict())
    on_gpu.cuda()

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    gpu_samples = on_gpu.sample(8, generator=seeded()).cpu()
    torch.testing.assert_close(gpu_samples, model.sample(8, generator=seeded()), rtol=1e-4, atol=1e-5)
    cpu_nll = importance_weighted_nll(x, model.encode, model.decode, 50, generator=seeded())
    gpu_nll = importance_weighted_nll(x.cuda(), on_gpu.encode, on_gpu.decode, 50, generator=seeded())
    torch.testing.assert_close(gpu_nll.cpu(), cpu_nll, rtol=1e-4, atol=1e-3)


def test_dynamic_binarisation_on_the_gpu_draws_each_batch_afresh(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=64, val_size=100, binarize="dynamic")
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), distributed_sampler_kwargs=None,
        testing=False, precision_plugin=Precision(),
    )  # fmt: skip
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.is_cuda
    first, _ = dm.on_after_batch_transfer((images, labels), 0)
    second, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert first.is_cuda and is_binary(first) and is_binary(second) and not torch.equal(first, second)
    assert abs(first.mean().item() - images.float().mean().item() / 255) < 0.02  # E[draw] = grey level


def test_slicing_a_batch_on_the_gpu_and_the_nan_guard_never_make_the_host_wait():
    dataset = InMemoryImages(torch.zeros(256, 28, 28, dtype=torch.uint8), torch.zeros(256, dtype=torch.uint8))
    dataset.move_to(torch.device("cuda", 0))
    guard = StopOnNonFiniteLoss()
    trainer = SimpleNamespace(
        global_step=0, current_epoch=0, world_size=1, checkpoint_callback=None,
        strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor),
    )  # fmt: skip
    guard.on_train_start(trainer, SimpleNamespace(device=torch.device("cuda", 0)))
    loss = torch.ones((), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            dataset.__getitems__(list(range(step, 128 + step)))
            trainer.global_step = step
            guard.on_before_backward(trainer, None, loss if step != 1 else loss * float("nan"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(NonFiniteLossError, match="NaN or infinite at global step 1 "):
        guard.on_train_end(trainer, None)


class SyncWatch(Callback):
    """CUDA's sync debug mode on, "warn", from the second training step until validation starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 1:
            torch.cuda.set_sync_debug_mode("warn")

    def on_validation_start(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


def test_training_steps_on_a_gpu_never_make_the_host_wait_in_this_projects_code(tmp_path, monkeypatch, data_dir):
    """11 training steps with no logging step among them: any host-device sync they cause is reported
    (as a warning, from the Python line that caused it), and none may come from vae/."""
    monkeypatch.chdir(tmp_path)
    steps = ("--trainer.limit_train_batches", "12", "--trainer.log_every_n_steps", "1000")
    watch = ("--trainer.num_sanity_val_steps", "0", "--trainer.callbacks+=tests.test_gpu.SyncWatch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run_cli("fit", "--trainer.max_epochs", "1", *steps, *watch, *GPU, data_dir=data_dir)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchronizing CUDA operation" in str(w.message))
    ours = {where: n for where, n in syncs.items() if where.startswith(PROJECT_CODE)}
    assert not ours, f"host syncs in training steps from this project: {ours}; all: {dict(syncs)}"
