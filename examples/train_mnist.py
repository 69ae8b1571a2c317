"""Train a spiking network on Fashion-MNIST or MNIST with SAF or a SpikingJelly baseline.

    python examples/train_mnist.py -dataset fashion_mnist -data-dir ./data -method saf-e -lr 0.025
    python examples/train_mnist.py -dataset mnist -data-dir ./data -download -method saf-f

The gzipped idx files are read where they lie: in -data-dir itself, in torchvision's layout below it
(<data-dir>/FashionMNIST/raw, <data-dir>/MNIST/raw) and, for Fashion-MNIST, in Debian's
/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist). -download fetches them
with torchvision. Flags: ``python examples/train_mnist.py -h``; runs to expect: docs/examples.md.
"""
import sys

from saf_examples.run import main

if __name__ == "__main__":
    sys.exit(main(datasets=("fashion_mnist", "mnist"), description=__doc__.splitlines()[0]))
