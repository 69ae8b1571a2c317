r"""
The application shared by the bundled examples and the benchmarks: one training engine beside the
``spikingjelly_saf`` library, built on its public API.

- :mod:`.methods`: SAF-E, SAF-E-acc and SAF-F next to SpikingJelly's OTTT_O, OTTT_A, BPTT, SLTT and
  DSR and the ReLU ideal, as :class:`~saf_examples.methods.Method` objects.
- :mod:`.engine`: one epoch of training, one evaluation pass, and the deployment of a SAF network
  as LIF with the check that both predict the same, for any method.
- :mod:`.run` and :mod:`.cli`: the trainer behind ``examples/train_cifar.py``, ``train_mnist.py``
  and ``train_dvs.py`` (SpikingJelly's example flags, checkpoints that resume exactly, history,
  TensorBoard, plots, DistributedDataParallel under ``torchrun``).
- :mod:`.digits`: the main job, ``python examples/digits.py``.

It is not installed with the library: the scripts in ``examples/`` find it beside them, and the
benchmarks and tests put ``examples/`` on ``sys.path``.
"""
