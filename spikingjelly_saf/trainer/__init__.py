r"""
The training loop behind ``examples/train_cifar.py`` and ``examples/train_dvs.py``.

One trainer serves every method of :mod:`spikingjelly_saf.methods` (SAF-E, SAF-E-acc, SAF-F and
SpikingJelly's OTTT_O, OTTT_A, BPTT, SLTT) on CIFAR-10/100, DVS128 Gesture and CIFAR10-DVS. It
takes SpikingJelly's example flags and adds checkpoints that resume exactly, history files,
TensorBoard logs, plots and DistributedDataParallel under ``torchrun``.
"""
from .cli import build_parser
from .run import main

__all__ = ["build_parser", "main"]
