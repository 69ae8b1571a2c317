r"""
``main``: parse the flags, build data and model, train with checkpoints, write history and plots.
Under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ..methods import get_method
from . import checkpoint as ckpt
from .cli import DEFAULT_MODELS, build_parser
from .data import DataMissingError, build_datasets
from .loop import FiringRateRecorder, NonFiniteLossError, ce_mse_loss, evaluate, train_one_epoch
from .models import ModelChoiceError, build_model
from .report import peak_memory_mib, plot_history, reset_peak_memory, summary_line, write_history

__all__ = ["main", "run"]

#: Exit codes: the data is missing, the flags do not fit together, the loss stopped being finite.
EXIT_DATA, EXIT_USAGE, EXIT_NONFINITE = 2, 2, 3


class _Distributed:
    """The process group under ``torchrun`` (gloo on CPU, nccl on CUDA), or a single process."""

    def __init__(self, requested_device: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(requested_device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelChoiceError(f"-device {requested_device}: no CUDA device is available; "
                                   "use -device cpu.")
        if self.world_size > 1:
            if device.type == "cuda":
                device = torch.device("cuda", local_rank)
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float) -> list:
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all_true(self, flag: bool) -> bool:
        if not self.enabled:
            return bool(flag)
        tensor = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() == 0.0

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _default_out_dir(args) -> str:
    return os.path.join("runs", f"{args.dataset}_{args.model}_{args.method}_T{args.T}_b{args.b}_"
                                f"{args.opt}_lr{args.lr}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loaders(args, train_set, test_set, ddp: _Distributed):
    pin = ddp.device.type == "cuda"
    if ddp.enabled:
        train_sampler = DistributedSampler(train_set, num_replicas=ddp.world_size, rank=ddp.rank,
                                           shuffle=True, seed=args.seed)
        # Test shards without padding, so every test sample is counted exactly once.
        test_set = Subset(test_set, list(range(ddp.rank, len(test_set), ddp.world_size)))
        train = DataLoader(train_set, batch_size=args.b, sampler=train_sampler, num_workers=args.j,
                           pin_memory=pin, drop_last=False)
    else:
        train_sampler = None
        train = DataLoader(train_set, batch_size=args.b, shuffle=True, num_workers=args.j,
                           pin_memory=pin, drop_last=False)
    test = DataLoader(test_set, batch_size=args.b, shuffle=False, num_workers=args.j, pin_memory=pin)
    return train, test, train_sampler


def _optimizer(args, model):
    if args.opt == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


class _SyncCounter:
    """Counts DDP's gradient all-reduces (one per bucket per synchronisation)."""

    def __init__(self):
        self.calls = 0


def _counting_allreduce(counter: _SyncCounter, bucket):
    """A DDP communication hook: DDP's default all-reduce, counted in ``counter``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter.calls += 1
    return default_hooks.allreduce_hook(None, bucket)


class _WeightedLIFReadout:
    """Reads a LIF network's per-step outputs ``o[t]`` as SAF does: their weighted running average
    :math:`\bar O[T]`, so the deployed network predicts what the SAF network predicted."""

    def __init__(self, step_mode: str, decay: float):
        self.step_mode, self.decay = step_mode, decay

    def prediction_scores(self, y_seq: torch.Tensor) -> torch.Tensor:
        from .. import functional as saf_functional

        average, weight_sum = None, 0.0
        for t in range(y_seq.shape[1]):
            weight_sum_next = saf_functional.next_weight_sum(weight_sum, self.decay)
            average = saf_functional.running_average(y_seq[:, t], average, weight_sum_next,
                                                     weight_sum, self.decay)
            weight_sum = weight_sum_next
        return average


def _deployed_accuracy(module, method, args, test_loader, f_loss, info, ddp) -> Optional[float]:
    """Accuracy of the trained weights in the LIF network that ``to_lif`` builds."""
    try:
        from ..conversion import to_lif
    except ImportError as error:
        print(f"-deploy-lif: spikingjelly_saf.conversion.to_lif is not available ({error}); "
              "skipped.", file=sys.stderr)
        return None
    from ..training import saf_nodes

    lif_model = to_lif(module, memoryless="keep")
    readout = _WeightedLIFReadout(method.step_mode, saf_nodes(module)[-1].decay)
    _, correct, samples = evaluate(lif_model, readout, test_loader, f_loss, steps=args.T,
                                   sequence=info.sequence, device=ddp.device)
    correct, samples = ddp.sum(correct, samples)
    return correct / samples


def _check_arguments(args, method) -> None:
    if args.T < 1 or args.b < 1 or args.epochs < 1 or args.j < 0:
        raise ModelChoiceError("-T, -b and -epochs must be positive integers and -j >= 0.")
    if method.name.startswith("saf-") and not args.tau >= 1.0:
        raise ModelChoiceError(f"-tau {args.tau}: SAF needs tau >= 1 (tau=1 is memoryless).")
    if not method.name.startswith("saf-") and not args.tau > 1.0:
        raise ModelChoiceError(f"-tau {args.tau}: SpikingJelly's LIF neurons need tau > 1.")
    if not args.v_threshold > 0.0:
        raise ModelChoiceError(f"-v-threshold {args.v_threshold}: the threshold must be positive.")
    if not 0.0 < args.train_split < 1.0:
        raise ModelChoiceError(f"-train-split {args.train_split} must lie strictly between 0 and 1.")
    if args.cutout < 0 or not 0.0 <= args.loss_lambda <= 1.0:
        raise ModelChoiceError("-cutout must be >= 0 and -loss-lambda in [0, 1].")
    if args.amp and method.name in ("ottt-o", "ottt-a", "sltt"):
        raise ModelChoiceError(f"-amp is not available with {method.name}: SpikingJelly's "
                               "ottt_online_training takes no gradient scaler.")
    if args.stop_after is not None and args.stop_after < 1:
        raise ModelChoiceError("-stop-after must be a positive number of epochs.")


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` says; returns the summary dict (also written to ``summary.json``)."""
    args.model = args.model or DEFAULT_MODELS[args.dataset]
    method = get_method(args.method)
    if args.deploy_lif and not method.name.startswith("saf-"):
        raise ModelChoiceError(f"-deploy-lif converts a SAF network to LIF; method {method.name} "
                               "already trains LIF-type neurons. Drop -deploy-lif.")
    _check_arguments(args, method)
    ddp = _Distributed(args.device)
    try:
        return _run(args, method, ddp)
    finally:
        ddp.close()


def _run(args, method, ddp: _Distributed) -> dict:
    from tqdm import tqdm

    device = ddp.device
    if args.amp and device.type != "cuda":
        raise ModelChoiceError("-amp needs a CUDA device (float16 autocast with a GradScaler).")
    out_dir = Path(args.out_dir or _default_out_dir(args))
    _seed_everything(args.seed)

    # The first process converts DVS events to frames on disk; the others then read them.
    if ddp.main:
        train_set, test_set, info = build_datasets(args)
    ddp.barrier()
    if not ddp.main:
        train_set, test_set, info = build_datasets(args)
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    train_loader, test_loader, train_sampler = _loaders(args, train_set, test_set, ddp)

    model = build_model(args, method, info.num_classes, info.in_channels, info.sequence).to(device)
    optimizer = _optimizer(args, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    grad_scaler = torch.amp.GradScaler("cuda") if args.amp else None
    f_loss = ce_mse_loss(info.num_classes, args.loss_lambda)

    start_epoch, history, best = 0, [], {"test_acc": -1.0, "epoch": -1}
    resumed_rng = None
    if args.resume:
        state = ckpt.load_checkpoint(args.resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if grad_scaler is not None and state.get("grad_scaler"):
            grad_scaler.load_state_dict(state["grad_scaler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        rng_states = state["rng"]
        resumed_rng = rng_states[ddp.rank] if len(rng_states) == ddp.world_size else rng_states[0]

    module = model
    sync_counter = None
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if args.count_grad_syncs:
            sync_counter = _SyncCounter()
            model.register_comm_hook(sync_counter, _counting_allreduce)

    writer = None
    if ddp.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch)
        (out_dir / "args.json").write_text(json.dumps(vars(args), indent=1))
    title = f"{args.dataset} {args.model} {args.method} T={args.T}"
    memory_kind = peak_memory_mib(device)[1]
    last_path, best_path = out_dir / "checkpoint_last.pth", out_dir / "checkpoint_best.pth"

    if resumed_rng is not None:
        ckpt.set_rng_state(resumed_rng)
    end_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, end_epoch):
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        reset_peak_memory(device)
        if sync_counter is not None:
            sync_counter.calls = 0
        progress = None
        if ddp.main and not args.no_progress:
            progress = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{args.epochs}",
                            dynamic_ncols=True, leave=False)
        try:
            loss_sum, correct, samples, seconds = train_one_epoch(
                model, method, optimizer, train_loader, f_loss, epoch=epoch, steps=args.T,
                sequence=info.sequence, device=device, grad_scaler=grad_scaler, amp=args.amp,
                progress=progress, inject_nan=args.inject_nan_epoch == epoch and ddp.main,
                all_finite=ddp.all_true)
        finally:
            if progress is not None:
                progress.close()
        loss_sum, correct, samples = ddp.sum(loss_sum, correct, samples)
        recorder = FiringRateRecorder(module)
        test_loss, test_correct, test_samples = evaluate(
            module, method, test_loader, f_loss, steps=args.T, sequence=info.sequence,
            device=device, amp=args.amp)
        recorder.remove()
        test_loss, test_correct, test_samples = ddp.sum(test_loss, test_correct, test_samples)
        rate_sums = ddp.sum(*recorder.sums.values(), *recorder.counts.values())
        layers = list(recorder.sums)
        rates = {name: rate_sums[i] / rate_sums[len(layers) + i] if rate_sums[len(layers) + i] else 0.0
                 for i, name in enumerate(layers)}
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / samples, "train_acc": correct / samples,
            "test_loss": test_loss / test_samples, "test_acc": test_correct / test_samples,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": seconds, "train_samples_per_s": samples / seconds,
            "peak_memory_mib": max(ddp.gather(peak_memory_mib(device)[0])),
            "firing_rate": rates,
        }
        if sync_counter is not None:
            row["grad_syncs_per_batch"] = sync_counter.calls / len(train_loader)
        scheduler.step()
        history.append(row)
        improved = row["test_acc"] > best["test_acc"]
        if improved:
            best = {"test_acc": row["test_acc"], "epoch": epoch}
        rng_states = ddp.gather(ckpt.rng_state())
        if ddp.main:
            state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(),
                     "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
                     "epoch": epoch, "history": history, "best": best, "rng": rng_states,
                     "args": vars(args)}
            ckpt.atomic_save(state, last_path)
            if improved:
                ckpt.atomic_save(state, best_path)
            write_history(history, out_dir)
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                        "train_samples_per_s", "peak_memory_mib"):
                writer.add_scalar(key, row[key], epoch)
            for name, rate in rates.items():
                writer.add_scalar(f"firing_rate/{name}", rate, epoch)
            writer.flush()
            print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                  f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} | "
                  f"{seconds:.1f} s, {row['train_samples_per_s']:.1f} samples/s", flush=True)
        ddp.barrier()

    deployed = None
    if args.deploy_lif:
        deployed = _deployed_accuracy(module, method, args, test_loader, f_loss, info, ddp)
    summary = {"out_dir": str(out_dir), "epochs_done": len(history), "best": best,
               "last": history[-1] if history else None, "deployed_lif_test_acc": deployed}
    if ddp.main and history:
        plot_history(history, out_dir, title, memory_kind)
        summary["line"] = summary_line(title, history, best, memory_kind, deployed)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(summary["line"], flush=True)
    if writer is not None:
        writer.close()
    return summary


def main(argv: Optional[Sequence[str]] = None, datasets: Sequence[str] = ("cifar10", "cifar100"),
         description: str = "") -> int:
    r"""
    **API Language** - :ref:`中文 <trainer.main-cn>` | :ref:`English <trainer.main-en>`

    ----

    .. _trainer.main-cn:

    * **中文**

    示例脚本的入口：解析 ``argv`` （SpikingJelly 示例的参数加上 ``-method`` 等），训练并返回进程退出码：
    0 成功；2 数据缺失或参数组合无效（只打印一条说明，不打印 traceback）；3 损失出现 NaN/inf（保留上一个完好的检查点）。
    在 ``torchrun`` 下以 DistributedDataParallel 训练。

    ----

    .. _trainer.main-en:

    * **English**

    Entry point of the example scripts: parse ``argv`` (SpikingJelly's example flags plus
    ``-method`` and the rest), train, and return the exit code: 0 done; 2 missing data or flags that
    do not fit together (one message, no traceback); 3 the loss became NaN or infinite (the last good
    checkpoint is kept). Under ``torchrun`` it trains with DistributedDataParallel.

    :param argv: the arguments; ``None`` reads ``sys.argv``
    :param datasets: the ``-dataset`` choices, the first being the default
    :param description: the ``-h`` description
    """
    args = build_parser(datasets, description).parse_args(argv)
    try:
        run(args)
    except DataMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA
    except ModelChoiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as error:
        out_dir = Path(args.out_dir or _default_out_dir(args))
        last = out_dir / "checkpoint_last.pth"
        kept = (f"the last good checkpoint is kept: {last} (resume with -resume {last} and a lower -lr)"
                if last.is_file() else "no epoch finished, so there is no checkpoint to resume")
        print(f"error: stopped because {error}; {kept}.", file=sys.stderr)
        return EXIT_NONFINITE
    return 0
