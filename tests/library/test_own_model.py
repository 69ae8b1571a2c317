"""A SpikingJelly user's own model, end to end: a CSNN shaped like SpikingJelly's Fashion-MNIST
example goes through ``to_saf`` (soft-reset opt-in), trains with each SAF method in a custom loop,
is evaluated with ``saf_inference``, deployed with ``to_lif`` and reloaded into the same model built
with soft-reset ``IFNode``; the deployed network predicts exactly what SAF predicted (float64).
The code blocks of docs/own_model.md run here too, so the page cannot rot."""

import copy
import io
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from fabricate import make_mnist_family
from spikingjelly_saf import (FiringHealth, SAFNode, check_exactness, compare_with_lif,
                              saf_inference, saf_online_training, to_lif, to_saf)

DOC = Path(__file__).resolve().parents[2] / "docs" / "own_model.md"
T, BATCH, CHANNELS = 4, 10, 4


class CSNN(nn.Module):
    """The example's conv-BN-IFNode-pool blocks, with AvgPool (MaxPool breaks exactness) and without
    the example's internal T-expansion and mean (the documented contract): ``[T, B, 1, 28, 28]`` in,
    ``[T, B, 10]`` out, multi-step."""

    def __init__(self, channels: int = CHANNELS, v_reset=0.0):
        super().__init__()

        def spiking_neuron():
            return neuron.IFNode(v_reset=v_reset, surrogate_function=surrogate.ATan())

        # momentum=None: after a few training steps the running statistics are the average of
        # the batches seen, so the eval-mode network still fires in every layer (a silent layer
        # would make the exactness check below prove nothing).
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(channels, momentum=None),
            spiking_neuron(),
            layer.AvgPool2d(2, 2),
            layer.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(channels, momentum=None),
            spiking_neuron(),
            layer.AvgPool2d(2, 2),
            layer.Flatten(),
            layer.Linear(channels * 7 * 7, channels * 4 * 4, bias=False),
            spiking_neuron(),
            layer.Linear(channels * 4 * 4, 10, bias=False),
            spiking_neuron(),
        )
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x_seq):
        return self.conv_fc(x_seq)


def f_loss(output, label):
    return F.mse_loss(output, F.one_hot(label, 10).to(output.dtype))


def class_patterns(batch=BATCH, seed=0):
    """Images whose class lights one 7x7 block, over faint noise: [B, T, 1, 28, 28] and labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch) % 10
    images = 0.1 * torch.rand(batch, 1, 28, 28, generator=generator)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 4)
        images[i, 0, 7 * row:7 * row + 7, 7 * col:7 * col + 7] += 0.9
    return images.unsqueeze(1).repeat(1, T, 1, 1, 1), labels


def converted_csnn():
    torch.manual_seed(0)
    lif_model = CSNN()
    with torch.no_grad():  # strong enough classifier weights that the output layer fires
        for module in lif_model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(4.0)
    with pytest.raises(ValueError, match=r"4 IFNodes \('conv_fc.2', 'conv_fc.6', 'conv_fc.10' and 1 more\), each:.*soft_reset=True"):
        to_saf(lif_model)
    with pytest.warns(UserWarning, match="soft-reset IFNode network"):
        model = to_saf(lif_model, soft_reset=True)
    return model


def output_spike_counts(lif_model, x_seq):
    functional.reset_net(lif_model)
    with torch.no_grad():
        counts = lif_model(x_seq.transpose(0, 1)).sum(0)
    functional.reset_net(lif_model)
    return counts


@pytest.mark.parametrize("method", ["saf-e", "saf-e-acc", "saf-f"])
def test_own_csnn_trains_evaluates_and_deploys_exactly(method):
    model = converted_csnn()
    assert all(isinstance(m, SAFNode) for m in model.modules() if isinstance(m, neuron.BaseNode))
    train_report = check_exactness(model)
    assert train_report.exact_in_eval and train_report.kinds() == {"batch-statistics"}
    assert check_exactness(copy.deepcopy(model).eval()).exact

    x_seq, labels = class_patterns()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 / (T if method == "saf-e" else 1),
                                momentum=0.9)
    health = FiringHealth(model, method=method, steps=T)
    before = copy.deepcopy(model.state_dict())
    model.train()
    for _ in range(3):
        functional.reset_net(model)
        loss, y_seq = saf_online_training(model, optimizer, x_seq, labels, f_loss, method=method)
        assert torch.isfinite(loss) and y_seq.shape == (BATCH, T, 10)
    assert health.problems() == [], "a healthy network must not be reported"
    health.remove()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed), changed

    model.eval()
    scores = saf_inference(model, x_seq)
    assert scores.shape == (BATCH, 10)
    assert torch.equal(scores, saf_inference(model, x_seq)), "no state carried between sequences"

    # Deploy: the LIF network's state_dict, through a file, into the same class with soft reset.
    lif_model = to_lif(model)
    assert all(type(m) is neuron.IFNode and m.v_reset is None
               for m in lif_model.modules() if isinstance(m, neuron.BaseNode))
    buffer = io.BytesIO()
    torch.save(lif_model.state_dict(), buffer)
    buffer.seek(0)
    deployed = CSNN(v_reset=None)
    deployed.load_state_dict(torch.load(buffer, weights_only=True))
    deployed.eval()

    # Exactness is claimed in float64: every layer fires and every spike matches.
    saf64, deployed64, x64 = copy.deepcopy(model).double(), deployed.double(), x_seq.double()
    comparison = compare_with_lif(saf64, x64, lif_model=deployed64)
    assert comparison.spikes_equal and comparison.conclusive, str(comparison)
    assert comparison.spike_counts["conv_fc.12"] > 0, "the output layer must fire"
    saf_counts = (saf_inference(saf64, x64) * T).round()
    lif_counts = output_spike_counts(deployed64, x64)
    assert torch.equal(saf_counts, lif_counts)
    assert torch.equal(saf_counts.argmax(1), lif_counts.argmax(1))
    assert torch.allclose(saf_inference(saf64, x64), lif_counts / T, rtol=0, atol=1e-12)


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def test_every_code_block_of_the_own_model_page_runs(tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8, "the page lost its code blocks"
    data_dir = make_mnist_family(tmp_path / "data", train_count=8, test_count=4)
    monkeypatch.chdir(tmp_path)
    tiny = dict(T=2, channels=2, batch_size=4, epochs=1, data_dir=str(data_dir), device="cpu")
    namespace = {"__name__": "own_model_page"}
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index, block in enumerate(blocks):
            try:
                exec(compile(block, f"{DOC.name} block {index + 1}", "exec"), namespace)
            except Exception as error:  # name the block, which a bare traceback into exec hides
                raise AssertionError(f"{DOC.name}, python block {index + 1} fails:\n{block}") from error
            if "epochs" in namespace and namespace.get("_tiny") is None:
                namespace.update(tiny, _tiny=True, lr=0.1 / tiny["T"])
    assert namespace["_tiny"], "the settings block must define epochs"
    assert (tmp_path / "csnn_lif.pt").is_file()
    assert isinstance(namespace["deployed"], namespace["CSNN"])
    assert any("soft-reset IFNode network" in str(w.message) for w in caught)
    assert not any("StateCarriedOver" in type(w.message).__name__ for w in caught)
