"""`python train.py`, for tests/test_ddp.py: the real CLI in a real `ddp` run, on the synthetic MNIST.

Lightning's `ddp` launcher starts ranks 1..N-1 by running `sys.argv[0]` again, i.e. this file, so
every rank applies the same test-only patches before it calls `vae.cli.main()`:
- as in conftest.py, the synthetic files' MD5s are the ones that count, and there is no network:
  "fetching" writes the synthetic files;
- evaluation decodes the posterior mean (`posterior_mean_in_eval`), and `test/nll` draws each image's
  importance samples from a generator seeded by that image (`importance_samples_seeded_by_image`),
  so that metrics depend on the weights only and can be compared between runs with different
  numbers of ranks.
Each rank also records what it fetched, and for every pass over a DataLoader the sampler Lightning
gave it, a digest of its random state as the pass starts and the indices `__getitems__` received;
at exit it writes them to `ddp-record-rank<R>.json` in the working directory, for the test to read.

With `SIGKILL_IN_WRITE_AT_STEP=N` in the environment, rank 0 SIGKILLs its whole process group
(itself and the ranks it started) half-way through writing the checkpoint of optimiser step N: a
machine failure at a known moment, at the worst time.
"""

import atexit
import hashlib
import json
import os
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tests.helpers import synthetic_files
from vae import cli, module
from vae.checkpoints import SafeCheckpointIO
from vae.data import InMemoryImages
from vae.data import mnist as mnist_files
from vae.model import VAE

_vae_forward = VAE.forward
_importance_weighted_terms = module.importance_weighted_terms


def posterior_mean_in_eval(self: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`VAE.forward`, but in eval mode the decoder gets z = mu instead of the draw from q(z|x).

    The draw is still made: the random state moves as in a real run, where ranks evaluating shards
    of different sizes draw different amounts of noise and their states drift apart (which a
    resume must restore per rank).
    """
    if self.training:
        return _vae_forward(self, x)
    mu, logvar = self.encode(x)
    self.reparameterize(mu, logvar)
    return self.decode(mu), mu, logvar


def importance_samples_seeded_by_image(
    x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, decode, k: int, **options
):
    """`vae.elbo.importance_weighted_terms`, image by image, each image's k samples drawn from a
    generator seeded by its pixels: the same values whichever rank and batch the image was dealt to."""
    terms = []
    for i in range(len(x)):
        seed = int(hashlib.sha256(x[i].cpu().numpy().tobytes()).hexdigest()[:15], 16)
        one = slice(i, i + 1)
        generator = torch.Generator().manual_seed(seed)
        terms.append(
            _importance_weighted_terms(x[one], mu[one], logvar[one], decode, k, generator=generator, **options)
        )
    nll, recon = zip(*terms, strict=True)
    return torch.cat(nll), torch.cat(recon)


def sigkill_all_ranks_inside_the_write_at(step: int):
    """A `SafeCheckpointIO.save_checkpoint` that, at `step`, kills every rank with half the file written."""
    save_checkpoint, real_save = SafeCheckpointIO.save_checkpoint, torch.save

    def half_written_then_killed(obj, f, *args, **kwargs) -> None:
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        f.flush()
        os.killpg(0, signal.SIGKILL)

    def save(self: SafeCheckpointIO, checkpoint: dict, path, storage_options=None) -> None:
        if checkpoint["global_step"] == step:
            torch.save = half_written_then_killed
        save_checkpoint(self, checkpoint, path, storage_options)

    return save


def main() -> None:
    files = synthetic_files()
    record: dict[str, list] = {"fetched": [], "passes": []}

    def fake_mirror(names, dest: Path) -> None:
        for name in names:
            record["fetched"].append(name)
            (dest / name).write_bytes(files[name])

    dataloader_iter, getitems = DataLoader.__iter__, InMemoryImages.__getitems__

    def recording_iter(self: DataLoader):
        rng = hashlib.md5(torch.get_rng_state().numpy().tobytes()).hexdigest()  # the noise this pass will draw
        record["passes"].append(
            {"sampler": type(self.sampler).__name__, "size": len(self.dataset), "batches": [], "rng": rng}
        )
        return dataloader_iter(self)

    def recording_getitems(self: InMemoryImages, indices: list[int]):
        record["passes"][-1]["batches"].append([int(i) for i in indices])
        return getitems(self, indices)

    def write_record() -> None:
        rank = os.environ.get("LOCAL_RANK", "0")  # one machine: the local rank is the global rank
        Path(f"ddp-record-rank{rank}.json").write_text(json.dumps(record))

    mnist_files.MD5 = {name: hashlib.md5(content).hexdigest() for name, content in files.items()}
    mnist_files.FETCHERS = (fake_mirror,)
    VAE.forward = posterior_mean_in_eval
    module.importance_weighted_terms = importance_samples_seeded_by_image
    DataLoader.__iter__ = recording_iter
    InMemoryImages.__getitems__ = recording_getitems
    atexit.register(write_record)
    if "SIGKILL_IN_WRITE_AT_STEP" in os.environ:
        step = int(os.environ["SIGKILL_IN_WRITE_AT_STEP"])
        SafeCheckpointIO.save_checkpoint = sigkill_all_ranks_inside_the_write_at(step)
    cli.main()


if __name__ == "__main__":
    main()
