"""Train a spiking network on Fashion-MNIST or MNIST with SAF or a SpikingJelly baseline.

    python examples/train_mnist.py -T 4 -channels 8 -v-threshold 0.5 -method saf-e -lr 0.025
    python examples/train_mnist.py -dataset mnist -data-dir ./data -download -v-threshold 0.5 -method saf-f

-v-threshold 0.5 is the Fashion-MNIST recipe: at the default threshold of 1 the last layers do not
fire at first and the loss sits at chance for most of the first epoch (docs/examples.md shows both
first-epoch curves; add -max-train-batches 100 -no-progress to see one in minutes).

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
