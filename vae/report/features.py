"""A small CNN classifier of the data's labels, whose penultimate layer is the feature space in which the
report measures how far the model's samples are from real images. Plain PyTorch, no Lightning.

Why not Inception (FID): its features were learnt on ImageNet photographs, say little about 28 x 28
digits, and need a 100 MB download. A classifier trained on the same data's training split knows
what tells one digit from another, which is what a sample should get right. Its distance is named
for what it is (a Fréchet distance in this classifier's features), and it compares runs only when
they use the same classifier: the cache file is named by a checksum of the training images and
labels, and training is seeded, so every report on the same data uses the same network.
"""

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vae.atomic import atomic_write

FEATURES = 64
WIDTH = 16
POOL = 7  # the feature maps are averaged down to POOL x POOL (28 x 28 images: 7 x 7 already, a no-op)
EPOCHS = 2
BATCH_SIZE = 128
SEED = 0


class Classifier(nn.Module):
    """Two stride-2 convolutions, an average pool to 7 x 7 (any image size), a 64-wide feature layer, a linear head."""

    def __init__(self, channels: int, classes: int, width: int = WIDTH, features: int = FEATURES) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(POOL), nn.Flatten(), nn.Linear(2 * width * POOL * POOL, features), nn.ReLU(),
        )  # fmt: skip
        self.body.num_features = features  # what torchmetrics' FrechetInceptionDistance reads
        self.head = nn.Linear(features, classes)
        self.channels, self.classes = channels, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images (B, C, H, W) in [0, 1]."""
        return self.head(self.body(x))


def data_checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    """MD5 of the training images and labels: the classifier's cache key, whatever the data source is."""
    digest = hashlib.md5(images.cpu().contiguous().numpy().tobytes())
    digest.update(labels.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    to_float: Callable[[torch.Tensor], torch.Tensor],
    epochs: int = EPOCHS,
    seed: int = SEED,
) -> Classifier:
    """A classifier trained with Adam on the images and labels as the data module stores them, on the CPU,
    from `seed`.

    `to_float` makes a batch of stored images what the VAE sees, floats (B, C, H, W) in [0, 1] (the data
    module's own transfer step, so a binarised run's classifier sees binary images). The global random
    state is left as it was.

    On one thread: batches of 128 small images gain little from a second one, and on shared cores
    two threads spend more time waiting for each other than computing (docs/report.md, "Time").
    """
    classes = int(labels.max()) + 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            classifier = Classifier(to_float(images[:1]).shape[1], classes)
            optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
            for _ in range(epochs):
                for batch in torch.randperm(len(labels)).split(BATCH_SIZE):
                    loss = nn.functional.cross_entropy(classifier(to_float(images[batch])), labels[batch].long())
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return classifier.eval()


def cached_classifier(
    cache_dir: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    to_float: Callable[[torch.Tensor], torch.Tensor],
    epochs: int = EPOCHS,
) -> tuple[Classifier, Path, bool]:
    """(the classifier for this training set, its file, whether it was trained now rather than read).

    The file `classifier-<data checksum>-<network and training>.pt` holds plain tensors and sizes, read
    with weights_only=True; another network or training length is another file.
    """
    recipe = f"w{WIDTH}f{FEATURES}p{POOL}e{epochs}s{SEED}"
    path = cache_dir / f"classifier-{data_checksum(images, labels)[:16]}-{recipe}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        classifier = Classifier(saved["channels"], saved["classes"])
        classifier.load_state_dict(saved["state_dict"])
        return classifier.eval(), path, False
    classifier = train_classifier(images, labels, to_float, epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # a killed report never leaves half a file under the name
        torch.save(
            {"state_dict": classifier.state_dict(), "channels": classifier.channels, "classes": classifier.classes},
            f,
        )
    return classifier, path, True


@torch.no_grad()
def predicted_classes(classifier: Classifier, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The classifier's label for each image (float, (N, C, H, W) in [0, 1])."""
    return torch.cat([classifier(chunk).argmax(1) for chunk in x.split(batch_size)])
