r"""
CUDA C source of SAF's fused multi-step kernels (used by the CuPy backend and the compile test).

The kernels implement :func:`spikingjelly_saf.functional.saf_step` over a sequence ``[T, N]``:

* ``saf_forward``: one thread per neuron, looping over ``t`` inside; writes :math:`\bar A[t]` and,
  when a gradient is needed, what the surrogate needs: ``x = H - V_th`` (spike level) or the mask
  ``0 < s I / V_th < 1`` as ``uint8`` (representation level).
* ``saf_backward``: elementwise over ``T x N``, since the temporal path is detached:
  ``grad_I = grad_Abar * sg'(x) * s`` (the factor ``c[t]`` cancels) or
  ``grad_I = grad_Abar * mask * (s / V_th)``.
* ``*_pairs`` variants (16-bit dtypes) move two neighbouring values per thread as
  ``half2``/``__nv_bfloat162``; the launcher uses them when the row length is even.

Per-step coefficients come from the host, computed in double precision exactly as
:mod:`spikingjelly_saf.functional` computes them, as a float32 table ``[T, 4]``:
``(c[t] s, V_th lam c[t-1], lam c[t-1], 1 / c[t])``. Every operation rounds to nearest without
contraction into FMA, and its result is rounded to the storage dtype, the order of PyTorch's eager
arithmetic: so the forward matches the torch backend bitwise.
"""

from __future__ import annotations

import os
from typing import Optional

from .surrogate_codes import REPRESENTATION_LEVEL, SurrogateKernelCode

__all__ = ["CUDA_DTYPES", "kernel_names", "cuda_source", "NVRTC_OPTIONS", "cuda_header_dirs"]

#: torch dtype name -> (C scalar type, C pair type, header, to-float, from-float, pair to float2, float2 to pair)
CUDA_DTYPES = {
    "float32": ("float", None, "", "{}", "{}", None, None),
    "float16": ("__half", "__half2", "#include <cuda_fp16.h>", "__half2float({})",
                "__float2half_rn({})", "__half22float2({})", "__float22half2_rn({})"),
    "bfloat16": ("__nv_bfloat16", "__nv_bfloat162", "#include <cuda_bf16.h>",
                 "__bfloat162float({})", "__float2bfloat16_rn({})", "__bfloat1622float2({})",
                 "__float22bfloat162_rn({})"),
}

#: Options for NVRTC/nvcc: the explicit ``__f*_rn`` intrinsics already forbid FMA contraction in the
#: neuron arithmetic; ``--fmad=false`` keeps surrogate code given as text from being contracted too.
NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")


_HALF_HEADERS = ("cuda_fp16.h", "cuda_bf16.h")


def cuda_header_dirs(cuda_path: Optional[str] = None) -> list[str]:
    """Include directories that hold ``cuda_fp16.h`` and ``cuda_bf16.h``, most specific first.

    NVRTC has no default include path, so 16-bit kernels need one. Candidates: ``cuda_path``,
    ``$CUDA_PATH``/``$CUDA_HOME``, ``/usr/local/cuda``, and the ``nvidia`` pip packages that
    PyTorch's CUDA wheels install (``nvidia/cu13/include``, ``nvidia/cuda_runtime/include``, ...).
    """
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


def kernel_names(dtype: str) -> tuple[str, ...]:
    """The ``extern "C"`` kernels that :func:`cuda_source` defines for ``dtype``."""
    names = ("saf_forward", "saf_backward")
    if CUDA_DTYPES[dtype][1] is not None:
        names += ("saf_forward_pairs", "saf_backward_pairs")
    return names


def _indent(code: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in code.splitlines())


def cuda_source(code: SurrogateKernelCode, dtype: str) -> str:
    """The complete CUDA translation unit for one surrogate and one dtype."""
    if dtype not in CUDA_DTYPES:
        raise ValueError(f"dtype={dtype!r} has no CUDA kernel; valid: {', '.join(CUDA_DTYPES)}.")
    scalar, pair, header, to_float, from_float, pair_to_float2, float2_to_pair = CUDA_DTYPES[dtype]
    representation = code.level == REPRESENTATION_LEVEL
    if not representation and code.cuda is None:
        raise ValueError(f"surrogate {code.label} has no CUDA code.")
    saved = "unsigned char" if representation else "scalar_t"
    exact_storage = dtype == "float32"
    round_body = "return v;" if exact_storage else f"return {to_float.format(from_float.format('v'))};"
    if representation:
        derivative = "    return 0.0f;  // representation level: the mask is the derivative\n"
    else:
        derivative = _indent(code.cuda, 4) + "\n    return grad_s_to_h;\n"

    src = f"""// SAF fused multi-step kernels: {code.label}, {dtype}
{header}

typedef {scalar} scalar_t;
typedef {saved} saved_t;

__device__ __forceinline__ float load_float(const scalar_t v) {{ return {to_float.format('v')}; }}
__device__ __forceinline__ scalar_t store_float(const float v) {{ return {from_float.format('v')}; }}
// The value of v once stored in scalar_t: PyTorch rounds every eager operation to its dtype.
__device__ __forceinline__ float storage_round(const float v) {{ {round_body} }}

__device__ __forceinline__ float surrogate_derivative(const float over_th) {{
{derivative}}}

// One SAF step for one neuron. abar holds Abar[t-1] on entry and Abar[t] on exit.
__device__ __forceinline__ void saf_update(
    const float current, float &abar, const float *__restrict__ k,
    const float v_threshold, const float gain, float &over_th, unsigned char &mask) {{
    const float h = storage_round(__fsub_rn(storage_round(__fmul_rn(k[0], current)),
                                            storage_round(__fmul_rn(k[1], abar))));
    over_th = storage_round(__fsub_rn(h, v_threshold));
    const float spike = over_th >= 0.0f ? 1.0f : 0.0f;
    abar = storage_round(__fmul_rn(storage_round(__fadd_rn(spike, storage_round(__fmul_rn(k[2], abar)))), k[3]));
    const float u = storage_round(__fmul_rn(current, gain));
    mask = (u > 0.0f && u < 1.0f) ? 1 : 0;
}}

__device__ __forceinline__ saved_t saved_value(const float over_th, const unsigned char mask) {{
    return {"mask" if representation else "store_float(over_th)"};
}}

__device__ __forceinline__ float input_gradient(const float grad, const saved_t saved,
                                                const float input_scale, const float gain) {{
{"    return storage_round(__fmul_rn(storage_round(__fmul_rn(grad, saved ? 1.0f : 0.0f)), gain));" if representation else
 "    return __fmul_rn(__fmul_rn(grad, surrogate_derivative(load_float(saved))), input_scale);"}
}}

extern "C" __global__ void saf_forward(
    const scalar_t *__restrict__ input_seq, const scalar_t *__restrict__ abar_prev,
    const float *__restrict__ coefficients, scalar_t *__restrict__ abar_seq,
    saved_t *__restrict__ saved, const int steps, const long long neurons,
    const float v_threshold, const float gain) {{
    const long long n = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= neurons) return;
    float abar = load_float(abar_prev[n]);
    for (int t = 0; t < steps; ++t) {{
        const long long i = t * neurons + n;
        float over_th;
        unsigned char mask;
        saf_update(load_float(input_seq[i]), abar, coefficients + 4 * t, v_threshold, gain, over_th, mask);
        abar_seq[i] = store_float(abar);
        if (saved != nullptr) saved[i] = saved_value(over_th, mask);
    }}
}}

extern "C" __global__ void saf_backward(
    const scalar_t *__restrict__ grad_abar_seq, const saved_t *__restrict__ saved,
    scalar_t *__restrict__ grad_input_seq, const long long numel,
    const float input_scale, const float gain) {{
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {{
        grad_input_seq[i] = store_float(input_gradient(load_float(grad_abar_seq[i]), saved[i], input_scale, gain));
    }}
}}
"""
    if pair is None:
        return src
    saved_pair = "uchar2" if representation else "pair_t"
    pack_saved = ("make_uchar2(mask_x, mask_y)" if representation
                  else f"{float2_to_pair.format('make_float2(over_x, over_y)')}")
    unpack_saved = ("make_float2(s.x ? 1.0f : 0.0f, s.y ? 1.0f : 0.0f)" if representation
                    else pair_to_float2.format("s"))
    pair_gradient = (
        "storage_round(__fmul_rn(storage_round(__fmul_rn(g.{c}, m.{c})), gain))" if representation
        else "__fmul_rn(__fmul_rn(g.{c}, surrogate_derivative(m.{c})), input_scale)"
    )
    src += f"""
typedef {pair} pair_t;
typedef {saved_pair} saved_pair_t;

// Two neighbouring neurons per thread; needs an even row length (pairs never straddle rows).
extern "C" __global__ void saf_forward_pairs(
    const pair_t *__restrict__ input_seq, const pair_t *__restrict__ abar_prev,
    const float *__restrict__ coefficients, pair_t *__restrict__ abar_seq,
    saved_pair_t *__restrict__ saved, const int steps, const long long pairs,
    const float v_threshold, const float gain) {{
    const long long n = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= pairs) return;
    const float2 start = {pair_to_float2.format('abar_prev[n]')};
    float abar_x = start.x, abar_y = start.y;
    for (int t = 0; t < steps; ++t) {{
        const long long i = t * pairs + n;
        const float2 current = {pair_to_float2.format('input_seq[i]')};
        float over_x, over_y;
        unsigned char mask_x, mask_y;
        saf_update(current.x, abar_x, coefficients + 4 * t, v_threshold, gain, over_x, mask_x);
        saf_update(current.y, abar_y, coefficients + 4 * t, v_threshold, gain, over_y, mask_y);
        abar_seq[i] = {float2_to_pair.format('make_float2(abar_x, abar_y)')};
        if (saved != nullptr) saved[i] = {pack_saved};
    }}
}}

extern "C" __global__ void saf_backward_pairs(
    const pair_t *__restrict__ grad_abar_seq, const saved_pair_t *__restrict__ saved,
    pair_t *__restrict__ grad_input_seq, const long long pairs,
    const float input_scale, const float gain) {{
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs; i += stride) {{
        const float2 g = {pair_to_float2.format('grad_abar_seq[i]')};
        const saved_pair_t s = saved[i];
        const float2 m = {unpack_saved};
        grad_input_seq[i] = {float2_to_pair.format(
            'make_float2(' + pair_gradient.format(c='x') + ', ' + pair_gradient.format(c='y') + ')')};
    }}
}}
"""
    return src
