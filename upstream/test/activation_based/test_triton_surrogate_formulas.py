"""SpikingJelly's Triton surrogate derivatives (``_ops/triton_surrogate.py``) against exact values.

The kernels run through Triton's CPU interpreter in a child process (``TRITON_INTERPRET=1`` must be
set before Triton is imported), so the test needs Triton but no GPU.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

_CHILD = r"""
import json, sys
import torch
import triton
import triton.language as tl
from spikingjelly._ops.surrogate import _SURROGATE_IDS
from spikingjelly._ops.triton_surrogate import _surrogate_gradient


@triton.jit
def _kernel(x_ptr, out_ptr, n, alpha, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, _surrogate_gradient(tl.load(x_ptr + offsets, mask=mask), alpha, SURROGATE),
             mask=mask)


request = json.loads(sys.argv[1])
x = torch.tensor(request["x"], dtype=torch.float32)
out = torch.empty_like(x)
_kernel[(triton.cdiv(x.numel(), 64),)](x, out, x.numel(), request["alpha"], _SURROGATE_IDS[request["name"]], 64)
print(json.dumps([repr(v) for v in out.tolist()]))
"""


def triton_derivative(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    env = dict(os.environ, TRITON_INTERPRET="1")
    request = json.dumps({"name": name, "alpha": alpha, "x": [float(v) for v in x.tolist()]})
    result = subprocess.run([sys.executable, "-c", _CHILD, request], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.tensor([float(v) for v in json.loads(result.stdout.strip().splitlines()[-1])])


def test_sigmoid_derivative_keeps_its_tails_on_both_sides_of_the_threshold():
    alpha = 4.0
    x = torch.tensor([-30.0, -20.0, -5.0, -4.2, -1.0, -0.1, 0.0, 0.1, 1.0, 4.2, 5.0, 20.0, 30.0]) / alpha
    x64 = x.double() * alpha
    exact = (alpha * torch.sigmoid(x64) * torch.sigmoid(-x64)).float()
    got = triton_derivative("Sigmoid", x, alpha)
    # (1 - s) s alpha rounds to 0 for alpha x > ~16.6, while the derivative is even in x
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(got, got.flip(0), rtol=1e-6, atol=0.0)


def test_piecewise_quadratic_derivative_of_nan_is_nan_as_in_torch():
    alpha = 1.0
    x = torch.tensor([float("nan"), -2.0, -0.5, 0.0, 0.25, 1.0, 3.0])
    got = triton_derivative("PiecewiseQuadratic", x, alpha)
    exact = torch.where(alpha - alpha * alpha * x.abs() < 0, 0.0, alpha - alpha * alpha * x.abs())
    assert torch.isnan(got[0]), f"PiecewiseQuadratic's derivative at NaN is {got[0].item()}"
    torch.testing.assert_close(got[1:], exact[1:], rtol=1e-6, atol=0.0)
    # SpikingJelly's torch surrogate gives NaN there too
    from spikingjelly.activation_based import surrogate

    nan = torch.tensor([float("nan")], requires_grad=True)
    surrogate.PiecewiseQuadratic(alpha=alpha)(nan).sum().backward()
    assert torch.isnan(nan.grad).all()
