"""Training across two nodes for real: two torchrun "machines" on this host, one CPU process each.

The nodes talk over gloo and are started as docs/distributed.md tells a user to, on each machine:

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr 127.0.0.1 --master-port P \\
        train.py --trainer.strategy ddp --trainer.accelerator cpu --trainer.devices 1 --trainer.num_nodes 2

Each node runs in a working directory of its own; the run folder and the data are in a folder both
reach (as on a shared file system), so `--ckpt_path last` finds the same checkpoint on both. The
scenario, run once for the module, in two rounds of commands that run at the same time: an
uninterrupted two-node fit of 2 epochs, and the same fit with node 0 SIGKILLed half-way through
writing the checkpoint of step 16 (mid epoch 1); then both nodes of the killed run restarted with
`--ckpt_path last`, and a two-node `test` of the uninterrupted run. The script is tests/scripts/ddp_train.py,
whose records say which images each rank was served (each node writes its own).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, assert_same_training_state, write_data_dir
from tests.postgres_server import free_port
from tests.scripts.ddp_train import importance_samples_seeded_by_image, posterior_mean_in_eval
from tests.test_ddp import DATA, FIT, KILLED_AT, LAST_SAVED, QUIET, STEPS_PER_EPOCH, TRAIN
from vae import module
from vae.cli import VAECLI
from vae.model import VAE

NODES = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.num_nodes", "2"]  # fmt: skip
# (name, run folder, arguments, SIGKILL node 0 in the write of this step), the commands of a round at once
ROUNDS = [
    [("reference", "uninterrupted", FIT, None), ("killed", "interrupted", FIT, KILLED_AT)],
    [
        ("resume", "interrupted", ["fit", "--trainer.max_epochs", "2", "--ckpt_path", "last"], None),
        ("test", "uninterrupted", ["test", "--ckpt_path", "last", "--model.iw_samples", "3"], None),
    ],
]


def start_node(root: Path, name: str, shared: Path, port: int, rank: int, args: list[str], kill_at: int | None):
    """One node: `torchrun ... tests/scripts/ddp_train.py ARGS` in `root/name/node<rank>`, in a session of its own."""
    cwd = root / name / f"node{rank}"
    cwd.mkdir(parents=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    shared_folders = ["--data.data_dir", str(shared / "data"), "--trainer.logger.init_args.save_dir", str(shared)]
    command = [
        *torchrun,
        str(REPO / "tests" / "scripts" / "ddp_train.py"),
        *args,
        *DATA,
        *QUIET,
        *NODES,
        *shared_folders,
    ]
    if args[0] == "fit":
        command += ["--trainer.log_every_n_steps", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if kill_at is not None and rank == 0:
        env["SIGKILL_IN_WRITE_AT_STEP"] = str(kill_at)
    with open(cwd / "log.txt", "w") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_node(process: subprocess.Popen, log: Path) -> int:
    try:
        return process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"a node did not finish in 300 s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, files) -> dict[str, Path]:
    """The folder of each command's nodes (`node0/`, `node1/`: console, record), by name; and each
    run folder (`lightning_logs/`, `data/`), by name. Also each node's exit status, under `status`."""
    root = tmp_path_factory.mktemp("nodes")
    found: dict = {"status": {}}
    for run in ("uninterrupted", "interrupted"):
        found[run] = root / run
        write_data_dir(found[run], files)  # fetched once for all nodes, as docs/distributed.md says
    for commands in ROUNDS:
        running = []
        for name, run, args, kill_at in commands:
            port = free_port()
            for rank in (0, 1):
                running.append((name, rank, start_node(root, name, found[run], port, rank, args, kill_at)))
        for name, rank, process in running:
            found["status"][name, rank] = wait_node(process, root / name / f"node{rank}" / "log.txt")
            found[name] = root / name
        if commands is ROUNDS[0]:  # the killed run as it was left, for the checks
            shutil.copytree(found["interrupted"] / "lightning_logs", root / "killed" / "lightning_logs")
    return found


def console(nodes: dict[str, Path], name: str, rank: int) -> str:
    return (nodes[name] / f"node{rank}" / "log.txt").read_text()[-3000:]


def served(nodes: dict[str, Path], name: str, size: int) -> list[list[list[list[int]]]]:
    """Per node, per pass over the dataset of `size` images, per batch: the indices it was served."""
    records = [json.loads((nodes[name] / f"node{rank}" / "ddp-record-rank0.json").read_text()) for rank in (0, 1)]
    return [[p["batches"] for p in record["passes"] if p["size"] == size] for record in records]


def last(run: Path) -> dict:
    return torch.load(run / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


def test_two_nodes_share_each_epoch_and_only_global_rank_0_writes(nodes):
    for rank in (0, 1):
        assert nodes["status"]["reference", rank] == 0, console(nodes, "reference", rank)
    for epoch0, epoch1 in zip(*served(nodes, "reference", TRAIN), strict=True):  # per epoch: node 0's, node 1's
        assert [len(b) for b in epoch0] == [len(b) for b in epoch1] == [32] * STEPS_PER_EPOCH
        images0, images1 = sum(epoch0, []), sum(epoch1, [])
        assert set(images0) | set(images1) == set(range(TRAIN)) and len(set(images0) & set(images1)) == 1
    # one run folder, written by global rank 0; the nodes' own folders hold only their console and record
    assert [p.name for p in (nodes["uninterrupted"] / "lightning_logs").iterdir()] == ["version_0"]
    checkpoints = sorted(p.name for p in (nodes["uninterrupted"] / "lightning_logs/version_0/checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[0].startswith("best-epoch") and checkpoints[1] == "last.ckpt"
    for rank in (0, 1):
        assert sorted(p.name for p in (nodes["reference"] / f"node{rank}").iterdir()) == ["ddp-record-rank0.json",
                                                                                      "log.txt"]  # fmt: skip
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in console(nodes, "reference", 1)


def test_a_node_sigkilled_mid_epoch_both_restarted_end_as_the_uninterrupted_run(nodes):
    assert nodes["status"]["killed", 0] != 0 and nodes["status"]["killed", 1] != 0  # node 1 stopped too
    killed = last(nodes["killed"])
    assert (killed["epoch"], killed["global_step"]) == (1, LAST_SAVED)
    for rank in (0, 1):
        assert nodes["status"]["resume", rank] == 0, console(nodes, "resume", rank)
    # each node was served the rest of the second epoch, as in the uninterrupted run
    for reference, resumed in zip(served(nodes, "reference", TRAIN), served(nodes, "resume", TRAIN), strict=True):
        assert resumed == [reference[1][LAST_SAVED - STEPS_PER_EPOCH :]]
    a, b = last(nodes["uninterrupted"]), last(nodes["interrupted"])
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 2 * STEPS_PER_EPOCH)
    assert_same_training_state(a, b)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # no logger here: nothing to reload
@pytest.mark.filterwarnings("ignore:The checkpoint holds the random states of 2")  # a test draws no training noise
def test_a_two_node_test_gives_the_numbers_of_one_process_on_the_same_checkpoint(nodes, tmp_path, monkeypatch):
    """As in tests/test_ddp.py: evaluation at the posterior mean and importance samples seeded by the
    image (in the nodes' runs too), so that the numbers depend on the weights only."""
    for rank in (0, 1):
        assert nodes["status"]["test", rank] == 0, console(nodes, "test", rank)
    record = json.loads((nodes["uninterrupted"] / "lightning_logs/version_0/test_metrics.json").read_text())
    assert {"test/loss", "test/recon", "test/kl", "test/nll"} <= set(record["metrics"])
    monkeypatch.setattr(VAE, "forward", posterior_mean_in_eval)
    monkeypatch.setattr(module, "importance_weighted_terms", importance_samples_seeded_by_image)
    monkeypatch.chdir(tmp_path)
    ckpt = nodes["uninterrupted"] / "lightning_logs/version_0/checkpoints/last.ckpt"
    one = ["--data.data_dir", str(nodes["uninterrupted"] / "data"), "--trainer.logger", "false",
           "--trainer.accelerator", "cpu", "--trainer.devices", "1"]  # fmt: skip
    cli = VAECLI(args=["test", "--ckpt_path", str(ckpt), "--model.iw_samples", "3", *DATA, *QUIET, *one])
    for name, value in record["metrics"].items():
        assert cli.trainer.callback_metrics[name].item() == pytest.approx(value, rel=1e-6), name


@pytest.mark.parametrize(
    "world_size, options, said",
    [
        (3, ["--trainer.devices", "1", "--trainer.num_nodes", "2"], "(1 * 2) does not match the world size (3)"),
        (2, ["--trainer.devices", "1", "--trainer.num_nodes", "1"], "(1 * 1) does not match the world size (2)"),
    ],
    ids=["another --nproc-per-node on the other machine", "--trainer.num_nodes not torchrun's --nnodes"],
)  # fmt: skip
def test_process_counts_that_are_not_the_launchers_are_one_line_before_anything_runs(
    data_dir, tmp_path, monkeypatch, world_size, options, said
):
    """What torchrun gives the first process of node 0 (its environment), and a command line that
    does not agree with it: one line at once, rather than Lightning's traceback once `fit` starts."""
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0",
                "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port())}  # fmt: skip
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        VAECLI(args=["fit", "--data.data_dir", str(data_dir), *NODES[:4], *options])
    message = str(error.value)
    assert said in message and "--trainer.num_nodes its machines" in message and "\n" not in message
    assert not (tmp_path / "lightning_logs").exists()
