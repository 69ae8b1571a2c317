"""Theorem 2 (docs/theory.md): SAF-E's per-step gradients are OTTT_O's.

Statement proven here, in float64 against SpikingJelly's ``OTTTLIFNode`` + ``OTTTSequential``: with the
same weights and a static direct-encoded input, at every step t the SAF-E loss on the recovered
output o[t] equals OTTT's loss, and

* the gradient of every weight whose input comes from a spiking layer is equal to OTTT's;
* the gradient of every bias, and of the first layer's weight (fed by the constant input), is
  c[t] times OTTT's, c[t] = sum_{k<=t} lam^(t-k).

Covered: tau in {1, 2, 4, 1e6}, both decay_input values, T = 16, conv and linear biases, eval-mode
BatchNorm (its affine parameters frozen: they have no OTTT counterpart to equal), AvgPool, a residual
add and ``layer.Dropout``; single- and multi-step SAF.

The equality is of gradients at equal states. An optimizer step inside the sequence (OTTT_O, SAF-E)
changes what follows differently: LIF's membrane keeps the contributions of the old weights, while
SAF re-applies the new weights to the whole accumulated rate. tests/library/test_training.py shows the
update schedules: SAF-E-acc's minibatch update equals OTTT_A's.
"""

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, surrogate

from spikingjelly_saf import OutputRecovery
from spikingjelly_saf import functional as saf_functional

from nets import conv_net, freeze_batchnorm, lif_factory, randomise, saf_factory


def _loss(output, target):
    return 0.95 * nn.functional.cross_entropy(output, target) + 0.05 * nn.functional.mse_loss(
        output.softmax(1), nn.functional.one_hot(target, output.shape[1]).to(output)
    )


def _threshold(tau, decay_input):
    return 1.0 / tau if decay_input else 1.0


def _build_pair(tau, decay_input, surrogate_function=None):
    v_threshold = _threshold(tau, decay_input)
    ottt = conv_net(lif_factory(tau, decay_input, v_threshold, online=True),
                    container=layer.OTTTSequential).double()
    randomise(ottt, seed=21)
    saf = conv_net(saf_factory(tau, decay_input, v_threshold)).double()
    if surrogate_function is not None:
        for net in (ottt, saf):
            for m in net.modules():
                if hasattr(m, "surrogate_function"):
                    m.surrogate_function = surrogate_function
    saf.load_state_dict(ottt.state_dict())
    for net in (ottt, saf):
        freeze_batchnorm(net)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    return ottt, saf


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}


def _per_step_gradients_ottt(net, x, target, T):
    grads, losses = [], []
    torch.manual_seed(0)
    for _ in range(T):
        net.zero_grad()
        y = net(x)
        loss = _loss(y, target)
        loss.backward()
        functional.detach_net(net)
        grads.append(_grads(net))
        losses.append(loss.detach())
    return grads, losses


def _per_step_gradients_saf(net, x, target, T):
    grads, losses = [], []
    recovery = OutputRecovery(net[-2].decay)
    torch.manual_seed(0)
    for _ in range(T):
        net.zero_grad()
        loss = _loss(recovery(net(x)), target)
        loss.backward()
        grads.append(_grads(net))
        losses.append(loss.detach())
    return grads, losses


SCALED = {"0.weight", "0.bias", "4.branch.bias", "8.bias", "10.bias"}  # first layer and biases


SURROGATES = [
    surrogate.ATan(), surrogate.PiecewiseQuadratic(), surrogate.PiecewiseExp(), surrogate.SoftSign(),
    surrogate.SuperSpike(), surrogate.Erf(), surrogate.Sigmoid(alpha=2.0),
]


@pytest.mark.parametrize("surrogate_function", SURROGATES, ids=lambda s: type(s).__name__)
def test_any_spikingjelly_surrogate_acts_at_spike_level(surrogate_function):
    test_saf_e_step_gradients_equal_ottt(2.0, False, surrogate_function, T=4)


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0, 1e6])
def test_saf_e_step_gradients_equal_ottt(tau, decay_input, surrogate_function=None, T=16):
    ottt, saf = _build_pair(tau, decay_input, surrogate_function)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64, generator=g) * 2
    target = torch.randint(0, 3, (4,), generator=g)

    ottt_grads, ottt_losses = _per_step_gradients_ottt(ottt, x, target, T)
    saf_grads, saf_losses = _per_step_gradients_saf(saf, x, target, T)
    sums = saf_functional.weight_sums(0.0, saf_functional.decay_factor(tau), T)
    assert set(saf_grads[0]) == set(ottt_grads[0]) and SCALED <= set(saf_grads[0])

    nonzero = 0
    for t in range(T):
        torch.testing.assert_close(saf_losses[t], ottt_losses[t], rtol=1e-12, atol=1e-12)
        for name, g_ottt in ottt_grads[t].items():
            factor = sums[t] if name in SCALED else 1.0
            scale = g_ottt.abs().max().item()
            # Tolerance relative to the gradient's own size: with decay_input and tau = 1e6 the
            # gradients are ~1e-19, and an absolute tolerance would let anything pass.
            torch.testing.assert_close(saf_grads[t][name], factor * g_ottt, rtol=1e-9,
                                       atol=1e-10 * scale,
                                       msg=lambda m, n=name, t=t: f"{n} at t={t + 1}: {m}")
            nonzero += int(scale > 0)
    assert nonzero > 0.5 * T * len(ottt_grads[0]), "most gradients vanished: the test would be vacuous"


def test_unscaled_comparison_fails_for_biases():
    """The c[t] factor is real: without it the bias gradients at t >= 2 differ (tau = 2, c[2] = 1.5)."""
    ottt, saf = _build_pair(2.0, False)
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (4,))
    ottt_grads, _ = _per_step_gradients_ottt(ottt, x, target, 3)
    saf_grads, _ = _per_step_gradients_saf(saf, x, target, 3)
    assert not torch.allclose(saf_grads[2]["10.bias"], ottt_grads[2]["10.bias"])
    torch.testing.assert_close(saf_grads[2]["10.bias"], 1.75 * ottt_grads[2]["10.bias"])


def test_multi_step_gradient_is_sum_of_single_step_gradients():
    """'s' and 'm' modes give the same outputs, and 'm' mode's one backward sums the per-step gradients."""
    T, tau = 8, 2.0
    _, saf = _build_pair(tau, False)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (3,))

    saf_grads, _ = _per_step_gradients_saf(saf, x, target, T)
    functional.reset_net(saf)
    outputs_single = []
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(T):
            outputs_single.append(saf(x))
    functional.reset_net(saf)

    functional.set_step_mode(saf, "m")
    saf.zero_grad()
    torch.manual_seed(0)
    out_seq = saf(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))
    torch.testing.assert_close(out_seq, torch.stack(outputs_single), rtol=1e-12, atol=1e-12)
    o_seq = saf_functional.recover_instantaneous_seq(out_seq, saf_functional.decay_factor(tau))
    sum(_loss(o, target) for o in o_seq).backward()
    for name, p in saf.named_parameters():
        if p.requires_grad:
            expected = sum(g[name] for g in saf_grads)
            torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-12)
