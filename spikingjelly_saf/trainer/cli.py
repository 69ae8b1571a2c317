r"""
Command-line flags. The first group is SpikingJelly's own example flags (``-T -device -b -epochs -j
-data-dir -out-dir -resume -amp -opt -momentum -lr``); the rest choose the method, the neuron and
the run's bookkeeping.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..methods import METHOD_NAMES
from .models import SURROGATES

__all__ = ["build_parser", "DEFAULT_MODELS"]

#: The model each dataset trains when ``-model`` is not given.
DEFAULT_MODELS = {
    "cifar10": "ottt_spiking_vggws",
    "cifar100": "ottt_spiking_vggws",
    "dvs128_gesture": "DVSGestureNet",
    "cifar10_dvs": "CIFAR10DVSNet",
}


def build_parser(datasets: Sequence[str], description: str = "") -> argparse.ArgumentParser:
    r"""
    **API Language** - :ref:`中文 <trainer.build_parser-cn>` | :ref:`English <trainer.build_parser-en>`

    ----

    .. _trainer.build_parser-cn:

    * **中文**

    训练脚本的参数解析器：SpikingJelly 示例参数（``-T -device -b -epochs -j -data-dir -out-dir -resume -amp
    -opt -momentum -lr``）以及方法、神经元与记录相关的参数；``datasets`` 为 ``-dataset`` 的可选值。

    ----

    .. _trainer.build_parser-en:

    * **English**

    The argument parser of a training script: SpikingJelly's example flags (``-T -device -b -epochs
    -j -data-dir -out-dir -resume -amp -opt -momentum -lr``) plus the method, neuron and
    bookkeeping flags; ``datasets`` are the ``-dataset`` choices, the first being the default.
    """
    parser = argparse.ArgumentParser(description=description)
    sj = parser.add_argument_group("SpikingJelly example flags")
    sj.add_argument("-T", type=int, default=6, help="time steps (frames per sample for DVS data)")
    sj.add_argument("-device", default="cuda:0" , help="device, e.g. cuda:0 or cpu (under torchrun "
                    "each process takes cuda:LOCAL_RANK)")
    sj.add_argument("-b", type=int, default=128, help="batch size (per process under torchrun)")
    sj.add_argument("-epochs", type=int, default=300, help="number of epochs")
    sj.add_argument("-j", type=int, default=4, help="data-loading workers")
    sj.add_argument("-data-dir", required=True, help="root of the dataset")
    sj.add_argument("-out-dir", default=None,
                    help="where checkpoints, logs and plots go (default: runs/<dataset>_<model>_"
                         "<method>_T<T>_b<b>_<opt>_lr<lr>)")
    sj.add_argument("-resume", default=None, help="checkpoint to continue from (e.g. "
                    "<out-dir>/checkpoint_last.pth)")
    sj.add_argument("-amp", action="store_true", help="automatic mixed precision (CUDA only)")
    sj.add_argument("-opt", choices=("sgd", "adam"), default="sgd", help="optimizer")
    sj.add_argument("-momentum", type=float, default=0.9, help="SGD momentum")
    sj.add_argument("-lr", type=float, default=0.1, help="learning rate (cosine schedule)")

    model = parser.add_argument_group("method and model")
    model.add_argument("-dataset", choices=tuple(datasets), default=datasets[0])
    model.add_argument("-model", default=None,
                       help="SpikingJelly zoo model: ottt_spiking_vggws, ottt_spiking_vgg11(_ws), "
                            "ottt_spiking_vgg13(_ws), ottt_spiking_vgg16(_ws), ottt_spiking_vgg19(_ws), "
                            "DVSGestureNet, CIFAR10DVSNet, CIFAR10Net (default: "
                            + ", ".join(f"{k}: {v}" for k, v in DEFAULT_MODELS.items() if k in datasets)
                            + ")")
    model.add_argument("-channels", type=int, default=None,
                       help="width: channels of the parametric-LIF nets; for ottt_spiking_vggws the "
                            "first layer's width (64 in the zoo), later layers scaled alike")
    model.add_argument("-method", choices=METHOD_NAMES, default="saf-e",
                       help="training method; see docs/examples.md")
    model.add_argument("-tau", type=float, default=2.0, help="membrane time constant")
    model.add_argument("-v-threshold", type=float, default=1.0, help="firing threshold")
    model.add_argument("-surrogate", choices=tuple(SURROGATES), default="sigmoid",
                       help="surrogate gradient; 'rep' is SpikeRepresentation (SAF methods only)")
    model.add_argument("-alpha", type=float, default=None,
                       help="surrogate sharpness (default 4 for sigmoid, the surrogate's own default "
                            "otherwise)")
    model.add_argument("-backend", default="torch", help="SAFNode backend (SAF methods only)")
    model.add_argument("-deploy-lif", action="store_true",
                       help="also evaluate the trained SAF weights in the LIF network (to_lif)")

    train = parser.add_argument_group("training")
    train.add_argument("-seed", type=int, default=2022, help="seed of every random generator")
    train.add_argument("-weight-decay", type=float, default=0.0, help="weight decay")
    train.add_argument("-loss-lambda", type=float, default=0.05,
                       help="weight of the MSE (to the one-hot target) in the per-step loss "
                            "(1 - lambda) CE + lambda MSE")
    train.add_argument("-cutout", type=int, default=16,
                       help="cutout hole length for CIFAR augmentation (0 turns cutout off)")
    train.add_argument("-train-split", type=float, default=0.9,
                       help="CIFAR10-DVS: fraction of each class used for training (seeded split)")
    train.add_argument("-download", action="store_true",
                       help="download CIFAR-10/100 through torchvision when missing")
    train.add_argument("-stop-after", type=int, default=None,
                       help="stop after this many epochs in this invocation (for job time limits); "
                            "continue later with -resume")
    train.add_argument("-no-progress", action="store_true", help="no tqdm progress bars")
    train.add_argument("-count-grad-syncs", action="store_true",
                       help="record how many gradient all-reduces DDP runs per minibatch")
    # Exercises the non-finite-loss guard: the first process's loss in this epoch (0-based) becomes NaN.
    train.add_argument("-inject-nan-epoch", type=int, default=None, help=argparse.SUPPRESS)
    return parser
