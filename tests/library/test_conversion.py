"""to_saf / to_lif and the exactness report on small networks, in float64."""

import math

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from spikingjelly_saf import (InputAverage, SAFNode, check_exactness, compare_with_lif,
                              saf_online_training, to_lif, to_saf)


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def lif(**kwargs):
    kwargs.setdefault("v_reset", None)
    kwargs.setdefault("v_threshold", 0.3)
    return neuron.LIFNode(**kwargs)


def conv_net(make_neuron=lif, pool=None, batch_norm=True):
    pool = pool or layer.AvgPool2d(2, 2)
    net = nn.Sequential(
        layer.Conv2d(3, 6, 3, padding=1), layer.BatchNorm2d(6) if batch_norm else nn.Identity(),
        make_neuron(), pool,
        layer.Conv2d(6, 6, 3, padding=1), make_neuron(),
        layer.Flatten(), layer.Linear(6 * 4 * 4, 5), make_neuron(), layer.Linear(5, 3),
    )
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            # Strong enough weights that every layer fires: silent layers would prove nothing.
            m.weight.data.mul_(3.0)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net


def static_input(batch=2, steps=4, shape=(3, 8, 8), scale=3.0):
    return (torch.rand(batch, 1, *shape) * scale).expand(batch, steps, *shape)


def assert_state_dicts_identical(a: nn.Module, b: dict):
    sd = a.state_dict()
    assert list(sd) == list(b)
    for key in b:
        assert sd[key].dtype == b[key].dtype
        assert torch.equal(sd[key], b[key]), key


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_exact_twin(saf_model, x_seq):
    comparison = compare_with_lif(saf_model, x_seq)
    assert comparison.spikes_equal, comparison.spike_mismatches
    assert all(count > 0 for count in comparison.spike_counts.values()), comparison.spike_counts
    assert comparison.output_difference < 1e-9
    return comparison


# ---- to_saf ---------------------------------------------------------------------------------
def test_to_saf_carries_every_neuron_setting():
    sg = surrogate.ATan(alpha=3.0)
    net = nn.Sequential(layer.Linear(4, 4),
                        neuron.LIFNode(tau=3.0, decay_input=True, v_threshold=0.7, v_reset=None,
                                       surrogate_function=sg, detach_reset=False, step_mode="m",
                                       store_v_seq=True),
                        layer.Linear(4, 4), neuron.IFNode(v_threshold=0.4, v_reset=None))
    saf = to_saf(net)
    lif_node, if_node = saf[1], saf[3]
    assert type(lif_node) is SAFNode and type(if_node) is SAFNode
    assert (lif_node.tau, lif_node.decay_input, lif_node.v_threshold) == (3.0, True, 0.7)
    assert lif_node.surrogate_function is not None and isinstance(lif_node.surrogate_function, surrogate.ATan)
    assert lif_node.detach_reset is False and lif_node.step_mode == "m" and lif_node.store_v_seq
    assert math.isinf(if_node.tau) and if_node.decay_input is False and if_node.v_threshold == 0.4
    assert type(net[1]) is neuron.LIFNode, "inplace=False must leave the original model alone"
    assert to_saf(net, inplace=True) is net and type(net[1]) is SAFNode


def test_to_saf_converts_online_learning_neurons():
    net = nn.Sequential(layer.Linear(4, 4), neuron.OTTTLIFNode(), layer.Linear(4, 4),
                        neuron.SLTTLIFNode(v_reset=None, decay_input=False))
    saf = to_saf(net)
    assert [type(m) for m in (saf[1], saf[3])] == [SAFNode, SAFNode]
    assert saf[1].decay_input is False and saf[3].step_mode == "s"


@pytest.mark.parametrize("make_node, hint", [
    (lambda: neuron.LIFNode(), "v_reset=0.0"),
    (lambda: neuron.SLTTLIFNode(), "v_reset=0.0"),
    (lambda: neuron.IFNode(v_reset=-0.1), "v_reset=-0.1"),
])
def test_to_saf_refuses_hard_reset_naming_the_module(make_node, hint):
    net = nn.Sequential(layer.Linear(4, 4), nn.Sequential(make_node()))
    with pytest.raises(ValueError) as info:
        to_saf(net)
    message = str(info.value)
    assert "'1.0'" in message and hint in message and "v_reset=None" in message
    assert type(net[1][0]) is not SAFNode


def test_to_saf_refuses_neurons_it_cannot_express():
    net = nn.Sequential(layer.Linear(4, 4), neuron.ParametricLIFNode(v_reset=None))
    with pytest.raises(ValueError, match=r"'1' \(ParametricLIFNode\)"):
        to_saf(net)


def test_to_saf_keeps_shared_neurons_shared():
    node = lif()
    net = nn.Sequential(layer.Linear(4, 4), node, layer.Linear(4, 4), node)
    saf = to_saf(net)
    assert saf[1] is saf[3] and isinstance(saf[1], SAFNode)


def test_reset_net_resets_the_new_neurons_despite_the_reset_cache():
    net = nn.Sequential(conv_net())
    inner = net[0]
    functional.reset_net(net)    # fills SpikingJelly's reset cache with the LIF neurons
    functional.reset_net(inner)  # and a cache for the sub-container
    # While the old neurons live on (here: referenced by the caller), those caches stay valid.
    old_neurons = [m for m in net.modules() if isinstance(m, neuron.BaseNode)]
    to_saf(net, inplace=True)
    nodes = [m for m in net.modules() if isinstance(m, SAFNode)]
    assert len(nodes) == len(old_neurons) == 3
    for container in (net, inner):
        net(torch.rand(2, 3, 8, 8))
        assert all(node.weight_sum == 1.0 for node in nodes)
        functional.reset_net(container)
        assert all(node.weight_sum == 0.0 and not isinstance(node.abar, torch.Tensor)
                   for node in nodes)


def test_ottt_sequential_keeps_working_after_to_saf():
    net = layer.OTTTSequential(layer.Linear(6, 8), neuron.OTTTLIFNode(v_threshold=0.5),
                               layer.Linear(8, 8), neuron.OTTTLIFNode(v_threshold=0.5),
                               layer.Linear(8, 3))
    saf = to_saf(net)
    assert isinstance(saf, layer.OTTTSequential)
    saf.train()
    y = saf(torch.rand(2, 6))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3)
    functional.reset_net(saf)
    optimizer = torch.optim.SGD(saf.parameters(), lr=0.1)
    before = snapshot(saf)
    loss, y_seq = saf_online_training(saf, optimizer, torch.rand(2, 3, 6) * 3,
                                      torch.tensor([0, 2]), nn.functional.cross_entropy, "saf-e")
    assert torch.isfinite(loss) and y_seq.shape == (2, 3, 3)
    assert any(not torch.equal(before[k], v) for k, v in saf.state_dict().items())
    assert_exact_twin(saf, torch.rand(2, 1, 6).expand(2, 4, 6) * 3)


# ---- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("make_neuron", [lif, lambda: neuron.IFNode(v_reset=None, v_threshold=0.5),
                                         lambda: neuron.OTTTLIFNode(v_threshold=0.5)])
def test_round_trips_keep_parameters_bit_identical(make_neuron):
    net = conv_net(make_neuron)
    original = snapshot(net)
    saf = to_saf(net)
    assert_state_dicts_identical(saf, original)
    back = to_lif(saf)
    assert_state_dicts_identical(back, original)
    assert all(type(m) in (neuron.LIFNode, neuron.IFNode) for m in back.modules()
               if isinstance(m, neuron.BaseNode))
    again = to_saf(back)
    assert_state_dicts_identical(again, original)


def test_round_trip_from_saf_keeps_parameters_and_settings():
    net = conv_net(lambda: SAFNode(tau=4.0, decay_input=True, v_threshold=0.5))
    original = snapshot(net)
    lif_net = to_lif(net)
    assert all(isinstance(m, neuron.LIFNode) and m.tau == 4.0 and m.decay_input and m.v_reset is None
               for m in lif_net.modules() if isinstance(m, neuron.BaseNode))
    saf = to_saf(lif_net)
    assert_state_dicts_identical(saf, original)
    assert all(m.tau == 4.0 and m.decay_input for m in saf.modules() if isinstance(m, SAFNode))


# ---- to_lif ---------------------------------------------------------------------------------
def test_to_lif_refuses_memoryless_neurons_unless_kept():
    net = conv_net(lambda: SAFNode(tau=1.0, v_threshold=0.5))
    with pytest.raises(ValueError, match="memoryless='keep'"):
        to_lif(net)
    kept = to_lif(net, memoryless="keep")
    assert all(m.tau == 1.0 for m in kept.modules() if isinstance(m, SAFNode))
    with pytest.raises(ValueError, match="memoryless"):
        to_lif(net, memoryless="drop")


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("make_neuron", [
    lif,
    lambda: lif(tau=3.0, decay_input=False),
    lambda: neuron.IFNode(v_reset=None, v_threshold=0.5),
])
def test_lif_twin_reproduces_spikes_and_outputs(step_mode, make_neuron):
    saf = to_saf(conv_net(make_neuron)).eval()
    functional.set_step_mode(saf, step_mode)
    assert check_exactness(saf).exact
    assert_exact_twin(saf, static_input())


def test_memoryless_twin_is_exact():
    saf = conv_net(lambda: SAFNode(tau=1.0, v_threshold=0.5)).eval()
    assert_exact_twin(saf, static_input())


def test_sequence_input_needs_the_input_average():
    x_seq = torch.rand(2, 4, 3, 8, 8) * 3
    net = conv_net()
    averaged = to_saf(net, insert_input_average=True).eval()
    assert isinstance(averaged[0], InputAverage) and averaged[0].tau == 2.0
    assert_exact_twin(averaged, x_seq)
    assert isinstance(to_lif(averaged)[0], nn.Identity)
    without = to_saf(net).eval()
    comparison = compare_with_lif(without, x_seq)
    assert not comparison.spikes_equal and comparison.mismatched_neurons()[0] == "2"
    assert comparison.time_varying_input and not comparison.input_average
    assert "already the first neuron '2' differs" in str(comparison)
    assert "insert_input_average=True" in str(comparison)
    # A static input needs no input average, and a mismatch further on is not blamed on it.
    assert not any("InputAverage" in hint for hint in compare_with_lif(without, static_input()).hints())
    assert not any("InputAverage" in hint for hint in compare_with_lif(averaged, x_seq).hints())


# ---- MaxPool ----------------------------------------------------------------------------------
def test_replace_maxpool_keeps_geometry():
    cases = [layer.MaxPool2d(3, 2, 1), layer.MaxPool2d(2, 2, step_mode="m"), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
             nn.MaxPool1d(3, 2), nn.AdaptiveMaxPool2d((3, 3))]
    for pool in cases:
        swapped = to_saf(nn.Sequential(pool), replace_maxpool=True)[0]
        assert "AvgPool" in type(swapped).__name__
        assert (type(swapped).__module__.startswith("spikingjelly")
                == type(pool).__module__.startswith("spikingjelly"))
        x = torch.rand(2, 3, 9, 9) if not isinstance(pool, nn.MaxPool1d) else torch.rand(2, 3, 9)
        if getattr(pool, "step_mode", "s") == "m":
            x = x.unsqueeze(0)
            assert swapped.step_mode == "m"
        assert swapped(x).shape == pool(x).shape


def test_replace_maxpool_refuses_dilation():
    with pytest.raises(ValueError, match="dilation"):
        to_saf(nn.Sequential(nn.MaxPool2d(2, dilation=2)), replace_maxpool=True)


def test_maxpool_is_reported_and_really_breaks_the_twin():
    saf = to_saf(conv_net(pool=layer.MaxPool2d(2, 2))).eval()
    report = check_exactness(saf)
    assert report.modules() == ["3"] and report[0].kind == "max-pool"
    assert "replace_maxpool=True" in report[0].fix
    assert not compare_with_lif(saf, static_input()).spikes_equal
    swapped = to_saf(saf, replace_maxpool=True)
    assert check_exactness(swapped).exact
    assert_exact_twin(swapped, static_input())


# ---- the report -------------------------------------------------------------------------------
def test_report_is_text_and_data():
    net = conv_net(pool=layer.MaxPool2d(2, 2)).train()
    report = check_exactness(net)
    # What breaks the equivalence comes first; train-mode BatchNorm only matters for deployment.
    assert [(f.module, f.type, f.kind, f.effect) for f in report] == [
        ("3", "MaxPool2d", "max-pool", "breaks"), ("1", "BatchNorm2d", "batch-statistics", "train-mode")]
    assert not report.exact and not report.exact_in_eval and len(report) == 2
    assert [f.module for f in report.breaking] == ["3"]
    assert [f.module for f in report.train_mode_only] == ["1"] and not report.unproven
    text = str(report)
    assert "2 module(s)" in text and "3 (MaxPool2d) [max-pool]" in text and "model.eval()" in text
    assert text.index("max-pool") < text.index("batch-statistics")
    assert "fine for SAF training" in text
    rows = report.to_dicts()
    assert set(rows[0]) == {"module", "type", "kind", "reason", "fix", "effect"}
    assert check_exactness(net.eval()).modules() == ["3"]
    assert "exact" in str(check_exactness(to_saf(net, replace_maxpool=True)))
    only_bn = check_exactness(to_saf(net, replace_maxpool=True).train())
    assert not only_bn.exact and only_bn.exact_in_eval
    assert "exact in eval mode" in only_bn.summary()


def test_report_groups_identical_findings_and_leads_with_what_breaks():
    def block(channels):
        return [layer.Conv2d(channels, 4, 3, padding=1), layer.BatchNorm2d(4), lif()]

    net = nn.Sequential(*block(3), *block(4), *block(4), layer.MaxPool2d(2), *block(4),
                        nn.Dropout(0.5), layer.Flatten(), layer.Linear(64, 3)).train()
    report = check_exactness(net)
    assert report.modules("batch-statistics") == ["1", "4", "7", "11"]
    text = str(report)
    # One paragraph per kind, not one per module.
    assert text.count("why:") == 3, text
    assert "[batch-statistics] 4 modules (BatchNorm2d): 1, 4, 7, 11" in text
    breaks, train_mode = text.index("Breaks the LIF equivalence"), text.index("Train mode only")
    assert breaks < text.index("9 (MaxPool2d) [max-pool]") < train_mode
    assert train_mode < text.index("batch-statistics") and train_mode < text.index("dropout-mask")
    assert report.summary().startswith("SAF exactness report for Sequential: not exact; 6 module(s)")


def test_train_mode_batch_norm_really_differs():
    saf = to_saf(conv_net())
    x = static_input()
    saf.train()
    y_train = saf(x[:, 0])
    saf.eval()
    functional.reset_net(saf)
    y_eval = saf(x[:, 0])
    assert not torch.allclose(y_train, y_eval)
    no_running_stats = conv_net()
    no_running_stats[1] = layer.BatchNorm2d(6, track_running_stats=False)
    assert check_exactness(no_running_stats.eval()).kinds() == {"batch-statistics"}


def test_report_names_hard_reset_and_unsupported_neurons():
    net = nn.Sequential(layer.Linear(4, 4), neuron.LIFNode(), layer.Linear(4, 4),
                        neuron.ParametricLIFNode(v_reset=None), layer.Linear(4, 4), lif())
    report = check_exactness(net)
    assert [(f.module, f.kind) for f in report] == [("1", "hard-reset"), ("3", "learnable-tau")]
    other = nn.Sequential(layer.Linear(4, 4), neuron.KLIFNode(v_reset=None))
    assert [(f.module, f.kind) for f in check_exactness(other)] == [("1", "unsupported-neuron")]


def test_report_names_mixed_time_constants_which_really_break_the_twin():
    net = conv_net()
    net[5] = lif(tau=4.0)
    saf = to_saf(net).eval()
    report = check_exactness(saf)
    assert [(f.module, f.kind) for f in report] == [("5", "mixed-time-constant")]
    assert not compare_with_lif(saf, static_input()).spikes_equal


def test_report_names_nonlinear_and_time_varying_modules():
    class Attention(nn.Module):
        def forward(self, q, k):
            return q @ k.transpose(-1, -2)

    class Block(nn.Module):
        def __init__(self, cnf):
            super().__init__()
            self.cnf = cnf

    net = nn.Sequential(nn.ReLU(), nn.Dropout(0.5), layer.Dropout(0.5), nn.LayerNorm(4),
                        Attention(), Block("AND"), Block("ADD"), Block("IAND"),
                        layer.SynapseFilter(), nn.MultiheadAttention(4, 1)).train()
    report = check_exactness(net)
    assert [(f.module, f.kind) for f in report] == [
        ("0", "nonlinear-activation"), ("3", "sample-normalisation"),
        ("4", "spike-product"), ("5", "connect-function"), ("7", "connect-function"),
        ("9", "spike-product"), ("1", "dropout-mask"), ("8", "unknown-state")]
    assert [f.effect for f in report][-2:] == ["train-mode", "unproven"]
    assert "1" not in check_exactness(net.eval()).modules()


# ---- an allow-list: what the report does not know is unproven, not exact ----------------------
class Between(nn.Module):
    """Puts a module that is not a plain one-input layer between two neurons."""

    def __init__(self, inner, how):
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x):
        if self.how == "sequence":  # one step per call; the hidden state starts at zero each time
            return self.inner(x.unsqueeze(0))[0].squeeze(0)
        if self.how == "pair":
            return self.inner(x, x)
        return self.inner(x)


UNKNOWN_BETWEEN_NEURONS = {
    "RNN": lambda: Between(nn.RNN(8, 8), "sequence"),
    "LSTM": lambda: Between(nn.LSTM(8, 8), "sequence"),
    "GRU": lambda: Between(nn.GRU(8, 8), "sequence"),
    "Bilinear": lambda: Between(nn.Bilinear(8, 8, 8), "pair"),
    "Linear": lambda: Between(nn.Linear(8, 8), "plain"),  # the control: known to be affine
}


def net_around(middle):
    net = nn.Sequential(lif(), middle, layer.Linear(8, 8), lif(), layer.Linear(8, 3))
    net[2].weight.data.mul_(2.0)
    net[2].bias.data.fill_(0.3)
    return net


def intermittent_input():
    # Static currents between one and two thresholds: the first neurons fire on some steps only,
    # so their weighted averages differ from their spikes and a nonlinear map shows it.
    return (0.31 + 0.3 * torch.rand(4, 1, 8)).expand(4, 8, 8)


@pytest.mark.parametrize("name", list(UNKNOWN_BETWEEN_NEURONS))
def test_unknown_modules_between_neurons_are_unproven_and_really_differ(name):
    saf = to_saf(net_around(UNKNOWN_BETWEEN_NEURONS[name]())).eval()
    report = check_exactness(saf)
    comparison = compare_with_lif(saf, intermittent_input())
    assert comparison.conclusive or not comparison.spikes_equal, str(comparison)
    if name == "Linear":
        assert report.exact, str(report)
        assert comparison.spikes_equal and comparison.conclusive, str(comparison)
        return
    assert not report.exact and not report.exact_in_eval
    assert [(f.module, f.type, f.kind, f.effect) for f in report] == [
        ("1.inner", name, "unproven", "unproven")]
    assert "compare_with_lif" in report[0].fix and f"trust=[{name}]" in report[0].fix
    assert "Unproven" in str(report) and "Between" in str(report), "custom forward code is noted"
    # The neuron before the unknown module is exact, the one after it is not.
    assert comparison.mismatched_neurons() == ["3"], str(comparison)
    assert "spikes differ in 1 of 2 neuron layer(s), first in '3'" in str(comparison)


@pytest.mark.parametrize("make", [
    lambda: nn.MaxUnpool2d(2), lambda: layer.MaxUnpool2d(2), lambda: nn.Embedding(4, 4),
    lambda: nn.PairwiseDistance(), lambda: layer.TemporalBinSum(2),
])
def test_every_unknown_leaf_is_unproven(make):
    module = make()
    report = check_exactness(nn.Sequential(layer.Conv2d(2, 2, 3), lif(), module, lif()))
    assert [(f.module, f.kind, f.effect) for f in report] == [("2", "unproven", "unproven")]
    assert report[0].type == type(module).__name__


def test_subclasses_overriding_forward_are_unproven_unless_trusted():
    class Squared(nn.Linear):
        def forward(self, x):
            return super().forward(x) ** 2

    class Plain(layer.Linear):  # inherits SpikingJelly's forward: still known to be affine
        pass

    net = nn.Sequential(layer.Linear(4, 4), lif(), Squared(4, 4), lif(), Plain(4, 4), lif())
    report = check_exactness(net)
    assert [(f.module, f.kind) for f in report] == [("2", "unproven")]
    assert check_exactness(net, trust=[Squared]).exact
    with pytest.raises(TypeError, match="trust"):
        check_exactness(net, trust=["Squared"])


def test_known_affine_modules_and_containers_are_exact():
    from spikingjelly.activation_based.model.spiking_vggws_ottt import Scale

    net = layer.OTTTSequential(
        layer.WSConv2d(2, 4, 3, padding=1), lif(), Scale(2.74), nn.ZeroPad2d(1),
        layer.SeqToANNContainer(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4).eval()),
        nn.Identity(), lif(), layer.Dropout(0.5), layer.AdaptiveAvgPool2d(2), nn.Upsample(scale_factor=2),
        layer.Flatten(), nn.ModuleList([nn.Linear(64, 4)])[0], lif(), layer.Linear(4, 2))
    assert check_exactness(net).exact, str(check_exactness(net))
    assert check_exactness(to_saf(net, insert_input_average=True)).exact


def test_one_list_of_max_pools_and_one_neuron_rule():
    from spikingjelly_saf import conversion, exactness

    assert exactness.MAX_POOLS is conversion.MAX_POOLS
    fractional = nn.Sequential(nn.FractionalMaxPool2d(2, output_size=3))
    assert check_exactness(fractional).kinds() == {"max-pool"}
    with pytest.raises(ValueError, match="FractionalMaxPool2d.*random pooling regions"):
        to_saf(fractional, replace_maxpool=True)
    hard = neuron.IFNode()
    issue = conversion.neuron_issue(hard)
    assert issue.kind == "hard-reset" and issue.kind in check_exactness(nn.Sequential(hard)).kinds()
    assert conversion.neuron_issue(hard, soft_reset=True) is None


# ---- compare_with_lif: what it measured, and what it did not --------------------------------------
@pytest.mark.parametrize("bad, message", [
    (torch.rand(5), r"\[B, T, \*\].*got shape \(5,\)"),
    (torch.rand(0, 3, 3, 8, 8), "at least one sample"),
    (torch.rand(2, 0, 3, 8, 8), "one time step"),
])
def test_compare_with_lif_names_the_expected_shape(bad, message):
    saf = to_saf(conv_net()).eval()
    with pytest.raises(ValueError, match=message):
        compare_with_lif(saf, bad)
    with pytest.raises(TypeError, match="x_seq must be a tensor"):
        compare_with_lif(saf, [[0.0]])


def test_silent_layers_prove_nothing_and_say_so():
    # An all-zero input with no bias current: nothing fires, so equal spikes prove nothing, and
    # the MaxPool that check_exactness names is not exercised either.
    net = conv_net(pool=layer.MaxPool2d(2, 2))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.bias.data.zero_()
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.zero_()
            m.running_mean.zero_()
    saf = to_saf(net).eval()
    comparison = compare_with_lif(saf, torch.zeros(2, 4, 3, 8, 8))
    assert comparison.spikes_equal and not comparison.conclusive
    assert comparison.silent_neurons() == ["2", "5", "8"] and comparison.exercised_neurons() == []
    text = str(comparison)
    assert "not conclusive" in text and "never fired" in text and "prove" in text
    assert "'3' (max-pool)" in text
    assert "LIFComparison(" not in text
    assert repr(comparison).startswith("LIFComparison(spikes_equal=True, exercised=0/3")


def test_only_the_exercised_layers_count():
    # A firing stem and a silent rest (like an eval-mode ResNet where only the stem fires).
    net = conv_net()
    net[4].weight.data.zero_()
    net[4].bias.data.fill_(-1.0)
    saf = to_saf(net).eval()
    comparison = compare_with_lif(saf, static_input())
    assert comparison.spikes_equal and not comparison.conclusive
    assert comparison.exercised_neurons() == ["2"]
    assert set(comparison.silent_neurons()) == {"5", "8"}
    assert "only 1 was exercised (2)" in str(comparison)


def test_conclusive_comparison_summary():
    saf = to_saf(conv_net()).eval()
    comparison = assert_exact_twin(saf, static_input())
    assert comparison.conclusive
    assert str(comparison).startswith("LIF twin: spikes equal in all 3 neuron layer(s), every one "
                                      "exercised.")
    assert all(total == 2 * 4 * numel for (_, total), numel in zip(
        comparison.spike_mismatches.values(), (6 * 8 * 8, 6 * 4 * 4, 5)))


def test_compare_with_lif_restores_mixed_modes():
    saf = to_saf(conv_net()).train()
    saf[1].eval()
    compare_with_lif(saf, static_input())
    assert saf.training and not saf[1].training and saf[0].training


# ---- hard reset: refused by default, soft reset on request --------------------------------------
def stock_csnn(node=neuron.IFNode):
    """SpikingJelly's example style: default neurons, so v_reset=0.0 (hard reset)."""
    return nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), layer.BatchNorm2d(4), node(),
                         layer.AvgPool2d(2), layer.Flatten(), layer.Linear(4 * 4 * 4, 3), node())


@pytest.mark.parametrize("node", [neuron.IFNode, neuron.LIFNode])
def test_hard_reset_hint_names_the_neuron_found_and_the_opt_in(node):
    with pytest.raises(ValueError) as info:
        to_saf(stock_csnn(node))
    message = str(info.value)
    assert f"2 {node.__name__}s ('2', '6'), each:" in message
    assert f"neuron.{node.__name__}(v_reset=None" in message
    assert "soft_reset=True" in message
    other = "LIFNode" if node is neuron.IFNode else "IFNode("
    assert f"neuron.{other}" not in message
    finding = check_exactness(stock_csnn(node)).findings[0]
    assert finding.kind == "hard-reset" and "soft_reset=True" in finding.fix


def test_soft_reset_opt_in_converts_and_says_what_is_trained():
    net = stock_csnn()
    with pytest.warns(UserWarning, match=r"soft-reset IFNode network.*v_reset=None") as record:
        saf = to_saf(net, soft_reset=True)
    assert "2 x (IFNode, v_reset=0.0): '2', '6'" in str(record[0].message)
    assert [type(m) for m in saf.modules() if isinstance(m, neuron.BaseNode)] == [SAFNode, SAFNode]
    assert type(net[2]) is neuron.IFNode and net[2].v_reset == 0.0, "the original stays as it was"
    deployed = to_lif(saf)
    assert all(type(m) is neuron.IFNode and m.v_reset is None
               for m in deployed.modules() if isinstance(m, neuron.BaseNode))
    assert check_exactness(saf.eval()).exact
    with pytest.raises(TypeError, match="soft_reset"):
        to_saf(net, soft_reset="yes")


# ---- recurrent and feedback containers ---------------------------------------------------------
def _if_node():
    return neuron.IFNode(v_reset=None, v_threshold=0.5)


def test_to_saf_swaps_nested_and_root_containers_bottom_up():
    """A container directly inside another, a container whose sub-module is the neuron itself,
    and a container as the root are all swapped, around children already converted."""
    from spikingjelly_saf.recurrent import (FeedbackContainer, SAFElementWiseRecurrentContainer,
                                            SAFFeedbackContainer, SAFLinearRecurrentContainer)

    inner = layer.LinearRecurrentContainer(_if_node(), 4, 4)
    loop = FeedbackContainer(layer.Linear(3, 4), inner, layer.Linear(4, 4), step_mode="m")
    saf = to_saf(loop)
    assert type(saf) is SAFFeedbackContainer and type(saf.body) is SAFLinearRecurrentContainer
    assert isinstance(saf.body.sub_module, SAFNode)
    element_wise = to_saf(layer.ElementWiseRecurrentContainer(_if_node(), torch.add))
    assert type(element_wise) is SAFElementWiseRecurrentContainer
    assert isinstance(element_wise.sub_module, SAFNode)
    back = to_lif(saf)
    assert type(back) is FeedbackContainer and type(back.body) is layer.LinearRecurrentContainer
    assert isinstance(back.body.sub_module, neuron.IFNode)
    x_seq = (torch.rand(3, 1, 3) * 2).expand(3, 6, 3)  # static: no InputAverage needed
    comparison = compare_with_lif(saf, x_seq, lif_model=loop)
    assert comparison.spikes_equal and comparison.conclusive


def test_to_saf_keeps_the_random_stream():
    lif = nn.Sequential(layer.LinearRecurrentContainer(_if_node(), 4, 4))
    torch.manual_seed(5)
    to_saf(lif)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)


def test_repeated_neuron_findings_are_one_paragraph_with_a_count():
    from spikingjelly.activation_based.model import spiking_resnet

    with pytest.raises(ValueError) as info:
        to_saf(spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode))
    message = str(info.value)
    assert message.count("\n  - ") == 1 and len(message) < 800
    assert "17 LIFNodes ('sn1', 'layer1.0.sn1', 'layer1.0.sn2' and 14 more), each:" in message
    with pytest.warns(UserWarning) as record:
        to_saf(spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode), soft_reset=True)
    said = [str(w.message) for w in record if "soft_reset=True" in str(w.message)]
    assert len(said) == 1 and len(said[0]) < 500 and "17 x (LIFNode, v_reset=0.0)" in said[0]


def test_a_learnable_leak_is_refused_with_the_reason():
    net = nn.Sequential(layer.Linear(4, 4), neuron.ParametricLIFNode(v_reset=None))
    with pytest.raises(ValueError, match=r"'1' \(ParametricLIFNode\): its leak is learned.*one fixed leak"):
        to_saf(net)
