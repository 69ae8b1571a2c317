r"""
SAF's CUDA translation unit compiled for the CPU: the C++ prelude that defines the CUDA built-ins,
and the CPU launch code.

The CPU backend (``backend='cpp'``, :mod:`.cpp_backend`) and the test that executes the CUDA source
on the CPU both compile :func:`cpu_source`: :data:`CPU_PRELUDE`, then the unchanged text of
:func:`~.kernel_source.cuda_source`, then :data:`CPU_LAUNCH`. So the neuron arithmetic
(``saf_step``, ``saf_input_gradient`` and the surrogate derivative) is one source for every device.

* ``saf_cpu_forward`` / ``saf_cpu_backward``: the backend's entry points. They call the
  ``__device__`` functions from loops that the compiler vectorizes, over chunks of neurons in
  parallel (OpenMP; the state of a chunk stays in a local array across the steps).
* ``saf_launch_forward`` / ``saf_launch_backward``: a CUDA launch ``<<<grid, block>>>`` emulated
  (every CUDA thread runs the ``__global__`` kernel once with its ``blockIdx``/``threadIdx``), so
  that the kernels' own indexing, tails and grid-stride loop run exactly as on the GPU.

Every ``__f*_rn`` intrinsic is one IEEE operation rounded to nearest, and the unit is compiled
without FMA contraction and without ``-ffast-math`` (:data:`~.cpu_build.COMPILE_FLAGS`), so the
forward equals the torch backend bitwise. ``expf`` is the prelude's ``saf_expf``, written in plain
arithmetic so that it vectorizes (glibc's ``expf`` is a call per element).
"""

from __future__ import annotations

from .kernel_source import cuda_source
from .surrogate_codes import SurrogateKernelCode

__all__ = ["CPU_PRELUDE", "CPU_LAUNCH", "cpu_source", "CPU_ENTRY_POINTS"]

CPU_PRELUDE = r"""// CUDA built-ins for compiling SAF's CUDA source as C++ on the CPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))

struct saf_uint3 { unsigned int x, y, z; };
// Set by the emulated launches for the CUDA thread being run; thread-local because blocks run on
// several OpenMP threads at once.
static thread_local saf_uint3 threadIdx, blockIdx, blockDim, gridDim;

static inline float __fadd_rn(const float a, const float b) { return a + b; }
static inline float __fsub_rn(const float a, const float b) { return a - b; }
static inline float __fmul_rn(const float a, const float b) { return a * b; }
static inline float __fdiv_rn(const float a, const float b) { return a / b; }
static inline float __frcp_rn(const float a) { return 1.0f / a; }
static inline float __fsqrt_rn(const float a) { return std::sqrt(a); }
static inline float __fmaf_rn(const float a, const float b, const float c) { return std::fma(a, b, c); }
static inline float __fdividef(const float a, const float b) { return a / b; }
static inline float __saturatef(const float a) { return a > 0.0f ? (a < 1.0f ? a : 1.0f) : 0.0f; }

// exp(x) = 2^n exp(r): n = round(x / ln 2) by the 1.5 * 2^23 shifter, r = x - n ln 2 with ln 2 in
// two parts (n * ln2_hi is exact, so is the subtraction), exp(r) = 1 + (r + r^2 q(r)) by Taylor to
// degree 7 (|r| <= ln(2)/2: truncation below 2^-27), and 2^n as two factors so that a subnormal
// result is rounded once. Branch-free, so loops over it vectorize. NaN gives NaN, -inf 0, +inf inf.
static inline float saf_expf(const float x) {
    const float clamped = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
    const float shifter = 12582912.0f;
    const float shifted = clamped * 1.44269504088896341f + shifter;
    const float n = shifted - shifter;
    const float r = (clamped - n * 0.693145751953125f) - n * 1.4286068202862268e-06f;
    const float q = 0.5f + r * (1.6666666666666666e-1f + r * (4.1666666666666664e-2f
                    + r * (8.3333333333333332e-3f + r * (1.3888888888888889e-3f + r * 1.9841269841269841e-4f))));
    const float p = 1.0f + (r + (r * r) * q);
    int32_t bits;
    std::memcpy(&bits, &shifted, sizeof bits);
    int32_t k = bits - 0x4B400000;  // n as an integer; any value for NaN, where p is NaN anyway
    k = k < -150 ? -150 : (k > 128 ? 128 : k);
    const int32_t k1 = k / 2;
    const int32_t bits1 = (k1 + 127) << 23, bits2 = (k - k1 + 127) << 23;
    float scale1, scale2;
    std::memcpy(&scale1, &bits1, sizeof scale1);
    std::memcpy(&scale2, &bits2, sizeof scale2);
    return (p * scale1) * scale2;
}
#define expf saf_expf
#define __expf saf_expf

"""

CPU_LAUNCH = r"""

// ---- CPU launch ---------------------------------------------------------------------------------
namespace {
// Elements below which one thread does the work (PyTorch's at::internal::GRAIN_SIZE).
const long long SAF_GRAIN = 32768;
// Neurons whose state stays in a local array while the loop runs over the steps.
const long long SAF_CHUNK = 1024;
}

extern "C" void saf_cpu_forward(
    const float *__restrict__ input_seq, const float *__restrict__ abar_prev,
    const float *__restrict__ coefficients, float *__restrict__ abar_seq,
    saved_t *__restrict__ saved, const int steps, const long long neurons,
    const float v_threshold, const float gain) {
    const long long chunks = (neurons + SAF_CHUNK - 1) / SAF_CHUNK;
#pragma omp parallel for schedule(static) if (parallel: neurons * steps > SAF_GRAIN)
    for (long long chunk = 0; chunk < chunks; ++chunk) {
        const long long begin = chunk * SAF_CHUNK;
        const long long count = std::min(SAF_CHUNK, neurons - begin);
        float abar[SAF_CHUNK];
        for (long long j = 0; j < count; ++j) abar[j] = abar_prev[begin + j];
        for (int t = 0; t < steps; ++t) {
            const float k[4] = {coefficients[4 * t], coefficients[4 * t + 1], coefficients[4 * t + 2],
                                coefficients[4 * t + 3]};
            const long long row = static_cast<long long>(t) * neurons + begin;
            const float *__restrict__ current = input_seq + row;
            float *__restrict__ out = abar_seq + row;
            if (saved != nullptr) {
                saved_t *__restrict__ save = saved + row;
#pragma omp simd
                for (long long j = 0; j < count; ++j) {
                    abar[j] = saf_step(current[j], abar[j], k, v_threshold, gain, save + j);
                    out[j] = abar[j];
                }
            } else {
#pragma omp simd
                for (long long j = 0; j < count; ++j) {
                    abar[j] = saf_step(current[j], abar[j], k, v_threshold, gain, nullptr);
                    out[j] = abar[j];
                }
            }
        }
    }
}

extern "C" void saf_cpu_backward(
    const float *__restrict__ grad_abar_seq, const saved_t *__restrict__ saved,
    float *__restrict__ grad_input_seq, const long long numel, const float input_scale, const float gain) {
    // if(parallel: ...): a bare if clause on a combined construct applies to simd too (OpenMP 5),
    // and a false one would leave small layers unvectorized, about ten times slower.
#pragma omp parallel for simd schedule(static) if (parallel: numel > SAF_GRAIN)
    for (long long i = 0; i < numel; ++i) {
        grad_input_seq[i] = saf_input_gradient(grad_abar_seq[i], saved[i], input_scale, gain);
    }
}

// ---- emulated CUDA launch: kernel<<<grid, block>>>(...) ------------------------------------------
extern "C" void saf_launch_forward(
    const unsigned int grid, const unsigned int block,
    const float *input_seq, const float *abar_prev, const float *coefficients, float *abar_seq,
    saved_t *saved, const int steps, const long long neurons, const float v_threshold, const float gain) {
#pragma omp parallel for schedule(static)
    for (long long b = 0; b < static_cast<long long>(grid); ++b) {
        gridDim = {grid, 1, 1};
        blockDim = {block, 1, 1};
        blockIdx = {static_cast<unsigned int>(b), 0, 0};
        for (unsigned int t = 0; t < block; ++t) {
            threadIdx = {t, 0, 0};
            saf_forward(input_seq, abar_prev, coefficients, abar_seq, saved, steps, neurons, v_threshold, gain);
        }
    }
}

extern "C" void saf_launch_backward(
    const unsigned int grid, const unsigned int block,
    const float *grad_abar_seq, const saved_t *saved, float *grad_input_seq, const long long numel,
    const float input_scale, const float gain) {
#pragma omp parallel for schedule(static)
    for (long long b = 0; b < static_cast<long long>(grid); ++b) {
        gridDim = {grid, 1, 1};
        blockDim = {block, 1, 1};
        blockIdx = {static_cast<unsigned int>(b), 0, 0};
        for (unsigned int t = 0; t < block; ++t) {
            threadIdx = {t, 0, 0};
            saf_backward(grad_abar_seq, saved, grad_input_seq, numel, input_scale, gain);
        }
    }
}
"""

#: The ``extern "C"`` functions of :func:`cpu_source` besides the CUDA kernels themselves.
CPU_ENTRY_POINTS = ("saf_cpu_forward", "saf_cpu_backward", "saf_launch_forward", "saf_launch_backward")


def cpu_source(code: SurrogateKernelCode) -> str:
    """The C++ translation unit for one surrogate: prelude, the CUDA source, CPU launch code."""
    return CPU_PRELUDE + cuda_source(code) + CPU_LAUNCH
