"""The main job: a small spiking CNN trained on scikit-learn's digits (no download) with SAF-E,
SAF-E-acc and SAF-F next to SpikingJelly's OTTT, then deployed as an LIF network.

    python examples/digits.py [-epochs 8] [-T 4] [-method saf-e saf-f ...] [-seed 0]

Flags: ``python examples/digits.py -h``; the table it prints is in the README.
"""
import sys

from saf_examples.digits import main

if __name__ == "__main__":
    sys.exit(main())
