r"""
CUDA C source of SAF's fused multi-step kernels: the CuPy backend runs it on the GPU, the CPU backend
(:mod:`.cpu_source`) compiles the same text for the CPU.

The kernels implement :func:`spikingjelly_saf.gradients.step` over a float32 sequence ``[T, N]``:

* ``saf_forward``: one thread per neuron, looping over ``t`` inside; writes :math:`\bar A[t]` and,
  when a gradient is needed, what the backward multiplies by: the surrogate derivative
  ``sg'(x)`` at ``x = H - V_th`` (spike level) or the mask ``0 < s I / V_th < 1`` as ``uint8``
  (representation level).
* ``saf_backward``: elementwise over ``T x N``, since the temporal path is detached:
  ``grad_I = grad_Abar * sg'(x) * s`` (the factor ``c[t]`` cancels) or
  ``grad_I = grad_Abar * mask * (s / V_th)``, a subnormal result flushed to a signed zero
  (:data:`GRADIENT_FLUSH_BELOW`).

The derivative is evaluated in the forward, not the backward, because the forward streams its input
from memory anyway and has cycles to spare there, while the backward then reads one tensor and
multiplies: the same arithmetic, moved to where it costs least.

Per-step coefficients come from the host: the float32 table ``[T, 4]`` of
:func:`spikingjelly_saf.functional.coefficient_table` (columns
:data:`~spikingjelly_saf.functional.KERNEL_COLUMNS`: ``c[t] s, V_th lam c[t-1], lam c[t-1], 1 / c[t]``).
Every operation rounds to nearest without contraction into FMA, in the order of PyTorch's eager
arithmetic, so the forward matches the torch backend bitwise. 16-bit tensors are converted to
float32 by the host, as the torch backend computes them in float32 too
(:func:`~spikingjelly_saf.functional.compute_dtype`).
"""

from __future__ import annotations

import os
from typing import Optional

from .surrogate_codes import REPRESENTATION_LEVEL, SurrogateKernelCode

__all__ = ["CUDA_DTYPES", "kernel_names", "cuda_source", "NVRTC_OPTIONS", "cuda_header_dirs",
           "GRADIENT_FLUSH_BELOW"]

#: The backward kernels return a gradient of magnitude below float32's smallest normal number as a
#: zero of its sign. Such a gradient differs from zero by less than 1.2e-38, but every later
#: operation that reads it (the convolutions' backward above all) runs at the CPU's slow subnormal
#: speed: on ResNet-18 the sigmoid surrogate's far tails made SAF-E's convolution backward 30 %
#: slower than with the same gradients flushed.
GRADIENT_FLUSH_BELOW = 1.1754943508222875e-38

#: dtypes with CUDA source: the kernels compute and store float32.
CUDA_DTYPES = ("float32",)

#: Options for NVRTC/nvcc: the explicit ``__f*_rn`` intrinsics already forbid FMA contraction in the
#: neuron arithmetic; ``--fmad=false`` keeps surrogate code given as text from being contracted too.
NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")

_HALF_HEADERS = ("cuda_fp16.h", "cuda_bf16.h")


def cuda_header_dirs(cuda_path: Optional[str] = None) -> list[str]:
    """Include directories that hold the CUDA toolkit headers (``cuda_fp16.h``, ``cuda_bf16.h``), most
    specific first: ``cuda_path``, ``$CUDA_PATH``/``$CUDA_HOME``, ``/usr/local/cuda``, and the
    ``nvidia`` pip packages that PyTorch's CUDA wheels install."""
    roots = [cuda_path, os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    candidates = [os.path.join(root, "include") for root in roots if root]
    try:
        import nvidia

        for base in nvidia.__path__:
            candidates += [os.path.join(base, sub, "include") for sub in sorted(os.listdir(base))]
    except ImportError:
        pass
    found = []
    for directory in candidates:
        if directory not in found and all(os.path.isfile(os.path.join(directory, h)) for h in _HALF_HEADERS):
            found.append(directory)
    return found


def kernel_names(dtype: str = "float32") -> tuple[str, ...]:
    """The ``extern "C"`` kernels that :func:`cuda_source` defines."""
    _check_dtype(dtype)
    return ("saf_forward", "saf_backward")


def _check_dtype(dtype: str) -> None:
    if dtype not in CUDA_DTYPES:
        raise ValueError(f"dtype={dtype!r} has no CUDA kernel; valid: {', '.join(CUDA_DTYPES)} (16-bit "
                         "tensors are converted to float32 by the backend).")


def _indent(code: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in code.splitlines())


def cuda_source(code: SurrogateKernelCode, dtype: str = "float32") -> str:
    """The complete CUDA translation unit for one surrogate.

    The arithmetic is in two ``__device__`` functions, ``saf_step`` (one neuron, one step) and
    ``saf_input_gradient`` (one element of the backward); the ``__global__`` kernels only index. The
    CPU backend compiles this same text with :data:`~.cpu_source.CPU_PRELUDE` and calls the two
    functions from its own loops (:mod:`.cpu_source`).
    """
    _check_dtype(dtype)
    representation = code.level == REPRESENTATION_LEVEL
    if not representation and code.cuda is None:
        raise ValueError(f"surrogate {code.label} has no CUDA code.")
    if representation:
        derivative = "    return 0.0f;  // representation level: the mask is the derivative\n"
        saved_type = "unsigned char"
        save = "const float u = __fmul_rn(current, gain);\n        *saved = (u > 0.0f && u < 1.0f) ? 1 : 0;"
        gradient = "__fmul_rn(__fmul_rn(grad, saved ? 1.0f : 0.0f), gain)"
    else:
        derivative = _indent(code.cuda, 4) + "\n    return grad_s_to_h;\n"
        saved_type, save = "float", "*saved = surrogate_derivative(over_th);"
        gradient = "__fmul_rn(__fmul_rn(grad, saved), input_scale)"

    return f"""// SAF fused multi-step kernels: {code.label}, float32
typedef {saved_type} saved_t;

__device__ __forceinline__ float surrogate_derivative(const float over_th) {{
{derivative}}}

// One neuron, one step: Abar[t] from I[t] and Abar[t-1], with k the step's row of the coefficient
// table (c[t] s, V_th lam c[t-1], lam c[t-1], 1 / c[t]); stores what the backward multiplies by
// (the surrogate derivative at H - V_th, or the representation mask) in *saved unless saved is null.
__device__ __forceinline__ float saf_step(const float current, const float abar, const float *k,
                                          const float v_threshold, const float gain, saved_t *saved) {{
    const float h = __fsub_rn(__fmul_rn(k[0], current), __fmul_rn(k[1], abar));
    const float over_th = __fsub_rn(h, v_threshold);
    const float spike = over_th >= 0.0f ? 1.0f : 0.0f;
    if (saved != nullptr) {{
        {save}
    }}
    return __fmul_rn(__fadd_rn(spike, __fmul_rn(k[2], abar)), k[3]);
}}

// One element of the backward: the temporal path is detached, so it is elementwise. A subnormal
// result becomes a zero of its sign (GRADIENT_FLUSH_BELOW).
__device__ __forceinline__ float saf_input_gradient(const float grad, const saved_t saved,
                                                    const float input_scale, const float gain) {{
    const float grad_input = {gradient};
    return fabsf(grad_input) < {GRADIENT_FLUSH_BELOW!r}f ? __fmul_rn(grad_input, 0.0f) : grad_input;
}}

extern "C" __global__ void saf_forward(
    const float *__restrict__ input_seq, const float *__restrict__ abar_prev,
    const float *__restrict__ coefficients, float *__restrict__ abar_seq,
    saved_t *__restrict__ saved, const int steps, const long long neurons,
    const float v_threshold, const float gain) {{
    const long long n = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= neurons) return;
    float abar = abar_prev[n];
    for (int t = 0; t < steps; ++t) {{
        const long long i = t * neurons + n;
        abar = saf_step(input_seq[i], abar, coefficients + 4 * t, v_threshold, gain,
                        saved == nullptr ? nullptr : saved + i);
        abar_seq[i] = abar;
    }}
}}

extern "C" __global__ void saf_backward(
    const float *__restrict__ grad_abar_seq, const saved_t *__restrict__ saved,
    float *__restrict__ grad_input_seq, const long long numel,
    const float input_scale, const float gain) {{
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {{
        grad_input_seq[i] = saf_input_gradient(grad_abar_seq[i], saved[i], input_scale, gain);
    }}
}}
"""
