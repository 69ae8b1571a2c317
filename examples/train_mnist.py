"""Train a spiking network on Fashion-MNIST or MNIST with SAF or a SpikingJelly baseline.

    python examples/train_mnist.py -method saf-e
    python examples/train_mnist.py -dataset mnist -data-dir ./data -download -method saf-f

The defaults are the recipe of docs/examples.md (examples/saf_examples/recipes.py): SpikingJelly's
Fashion-MNIST schedule (T=4, batch 128, 64 epochs, SGD lr 0.1 momentum 0.9, cosine), 16 channels,
and a firing threshold of 0.5, with which every layer fires and the loss falls from the first
minibatches (add -max-train-batches 100 -no-progress to see it in a minute or two).

The gzipped idx files are read where they lie, from -data-dir only: the folder itself or
torchvision's layout below it (<data-dir>/FashionMNIST/raw, <data-dir>/MNIST/raw). Without
-data-dir, Fashion-MNIST is read from Debian's /usr/share/datasets/fashion-mnist (apt-get install
dataset-fashion-mnist). -download fetches them with torchvision. Flags: ``python
examples/train_mnist.py -h``; runs to expect: docs/examples.md.
"""
import sys

from saf_examples.run import main

if __name__ == "__main__":
    sys.exit(main(datasets=("fashion_mnist", "mnist"), description=__doc__.splitlines()[0]))
