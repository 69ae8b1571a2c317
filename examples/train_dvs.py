"""Train a spiking network on DVS128 Gesture or CIFAR10-DVS (T frames per sample) with SAF or a
SpikingJelly baseline.

    python examples/train_dvs.py -dataset dvs128_gesture -data-dir ./DVS128Gesture -T 16 -method saf-e
    python examples/train_dvs.py -dataset cifar10_dvs -data-dir ./CIFAR10DVS -T 10 -method saf-f

Flags: ``python examples/train_dvs.py -h``; the runs and accuracies to expect: docs/examples.md.
"""
import sys

from spikingjelly_saf.trainer import main

if __name__ == "__main__":
    sys.exit(main(datasets=("dvs128_gesture", "cifar10_dvs"), description=__doc__.splitlines()[0]))
