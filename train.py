"""Train a class-conditional DiT with rectified flow (single process or torchrun/DDP).

Time convention: t in [0, 1], t = 0 is noise, t = 1 is data,

    x_t = (1 - t) * noise + t * data,     loss = || v(x_t, t, y) - (data - noise) ||^2.

Examples:
    python train.py --dataset mnist --split test --model DiT-MNIST-tiny --steps 200
    torchrun --nproc_per_node=2 train.py --dataset mnist --split test --steps 100
    python train.py ... --resume            # continue from <out-dir>/last.pt

Reproducibility: the model is initialised from --seed; the data order comes from a
DistributedSampler seeded with --seed (epoch = step // batches_per_epoch), and the
noise, times and label dropout of step k on rank r come from a generator seeded by
(seed * world_size + r, k). A resumed run therefore reaches the same weights as an
uninterrupted one.
"""

import sys

from models.cli import run_cli
from models.training import parse_args as parse_training_args
from models.training import train as main


def parse_args(argv=None):
    """train.py's arguments (models/training.py builds and checks them; this docstring is --help's)."""
    return parse_training_args(argv, prog="train.py", description=__doc__)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "train.py"))
