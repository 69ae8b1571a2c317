"""Train a spiking network on DVS128 Gesture or CIFAR10-DVS (T frames per sample) with SAF or a
SpikingJelly baseline.

    python examples/train_dvs.py -dataset dvs128_gesture -data-dir ./DVS128Gesture -T 16 -method saf-e
    python examples/train_dvs.py -dataset cifar10_dvs -data-dir ./CIFAR10DVS -T 10 -method saf-f

SpikingJelly integrates each sample's events into T frames (2 polarity channels, 128x128) the first
time a T is used and keeps them in <data-dir>/frames_number_<T>_split_by_number. SAF methods put
InputAverage in front of the network, so the frames enter as their weighted running average, as
the LIF network's first layer would integrate them. DVS128 Gesture has its own train/test split;
CIFAR10-DVS is split per class with -train-split (seeded by -seed). Flags:
``python examples/train_dvs.py -h``; the runs and accuracies to expect: docs/examples.md.
"""
import sys

from saf_examples.run import main

if __name__ == "__main__":
    sys.exit(main(datasets=("dvs128_gesture", "cifar10_dvs"),
                  description=__doc__.split("\n\n")[0].replace("\n", " ")))
