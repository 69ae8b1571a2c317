"""Train a spiking network on CIFAR-10 or CIFAR-100 with SAF or a SpikingJelly baseline.

    python examples/train_cifar.py -data-dir ./data -device cuda:0 -method saf-e
    torchrun --nproc_per_node=4 examples/train_cifar.py -data-dir ./data -method saf-f

Flags: ``python examples/train_cifar.py -h``; the runs and accuracies to expect: docs/examples.md.
"""
import sys

from saf_examples.run import main

if __name__ == "__main__":
    sys.exit(main(datasets=("cifar10", "cifar100"), description=__doc__.splitlines()[0]))
