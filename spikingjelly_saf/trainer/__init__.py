r"""
The training loop behind ``examples/train_cifar.py``, ``examples/train_mnist.py`` and
``examples/train_dvs.py``.

One trainer serves every method of :mod:`spikingjelly_saf.methods` (SAF-E, SAF-E-acc, SAF-F and
SpikingJelly's OTTT_O, OTTT_A, BPTT, SLTT) on CIFAR-10/100, Fashion-MNIST, MNIST, DVS128 Gesture and
CIFAR10-DVS. It takes SpikingJelly's example flags, checks every value before anything is written
(a bad one ends the script with one message and exit status 2), and adds checkpoints that resume
exactly, history files, TensorBoard logs, plots, firing-health warnings and DistributedDataParallel
under ``torchrun``.
"""
from .cli import build_parser
from .run import main

__all__ = ["build_parser", "main"]
