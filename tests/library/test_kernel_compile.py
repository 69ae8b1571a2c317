"""The CUDA source of the CuPy backend compiles, for every surrogate (float32; 16-bit tensors are converted).

Two compilers, neither needs a GPU: ``nvcc --ptx`` (skipped when ``nvcc`` is not on PATH) and NVRTC,
the run-time compiler CuPy itself uses, through its C API (skipped when no ``libnvrtc`` is found,
e.g. in PyTorch's ``nvidia`` pip packages). Both get the options the CuPy backend gives NVRTC.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import glob
import itertools
import os
import re
import shutil
import subprocess

import pytest
from spikingjelly.activation_based import surrogate

from spikingjelly_saf.backends import kernel_source, surrogate_codes
from spikingjelly_saf.surrogate import SpikeRepresentation

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not on PATH")


class LegacyCudaSurrogate:
    """A SpikingJelly < 2.0 style surrogate exposing cuda_codes(y, x, dtype)."""

    spiking = True

    def cuda_codes(self, y, x, dtype):
        return (f"const float sg_ax = 2.0f * {x};\n"
                f"{y} = 1.0f / (1.0f + sg_ax * sg_ax);")


SURROGATES = [
    surrogate.Sigmoid(alpha=4.0), surrogate.ATan(alpha=2.0), surrogate.PiecewiseQuadratic(alpha=1.0),
    surrogate.PiecewiseExp(alpha=2.0), surrogate.SoftSign(alpha=2.0), surrogate.SuperSpike(alpha=1.0),
    surrogate.Erf(alpha=2.0), SpikeRepresentation(), LegacyCudaSurrogate(),
]


def compile_to_ptx(source: str, workdir, name: str):
    path = workdir / f"{name}.cu"
    path.write_text(source)
    ptx = workdir / f"{name}.ptx"
    result = subprocess.run(
        [NVCC, "--ptx", "-arch=sm_80", *kernel_source.NVRTC_OPTIONS, "-o", str(ptx), str(path)],
        capture_output=True, text=True, timeout=300,
    )
    return result, ptx


def entry_body(ptx_text: str, entry: str) -> str:
    start = ptx_text.index(f".entry {entry}(")
    following = ptx_text.find(".entry ", start + 1)
    return ptx_text[start:following if following != -1 else len(ptx_text)]


def all_sources():
    """(name, source, dtype, whether the forward must be free of FMA) for every surrogate and dtype.

    A spike-level forward evaluates the surrogate derivative, whose ``expf`` or ``erff`` may use FMA
    inside CUDA's math library; its neuron update must not. So each spike-level source is compiled
    a second time with the derivative replaced by a copy of its argument, and that forward, like
    the representation level's, must hold no FMA at all."""
    jobs = []
    for sg, dtype in itertools.product(SURROGATES, kernel_source.CUDA_DTYPES):
        code = surrogate_codes.surrogate_code_by_id(surrogate_codes.resolve_surrogate_code(sg, "cupy"))
        name = f"{type(sg).__name__}_{dtype}"
        if code.cuda is None:
            jobs.append((name, kernel_source.cuda_source(code, dtype), dtype, True))
            continue
        jobs.append((name, kernel_source.cuda_source(code, dtype), dtype, False))
        update_only = dataclasses.replace(code, cuda="const float grad_s_to_h = over_th;")
        jobs.append((f"{name}_update", kernel_source.cuda_source(update_only, dtype), dtype, True))
    return jobs


@needs_nvcc
def test_every_surrogate_and_dtype_compiles(tmp_path):
    jobs = all_sources()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: compile_to_ptx(job[1], tmp_path, job[0]), jobs))
    failures = [f"{name}:\n{result.stderr}" for (name, _, _, _), (result, _) in zip(jobs, results)
                if result.returncode != 0]
    assert not failures, "\n".join(failures)
    assert sum(fma_free for *_, fma_free in jobs) == len(SURROGATES)
    for (name, _, dtype, fma_free), (_, ptx) in zip(jobs, results):
        text = ptx.read_text()
        entries = set(re.findall(r"\.entry (\w+)\(", text))
        assert entries == set(kernel_source.kernel_names(dtype)), (name, entries)
        if fma_free:
            # No FMA in the neuron update: the forward must round like PyTorch's separate mul and add.
            assert "fma." not in entry_body(text, "saf_forward"), name


def test_kernels_read_the_functional_coefficient_table():
    """The kernels take their per-step numbers from functional.coefficient_table, column by column."""
    from spikingjelly_saf import functional as saf_functional
    import torch

    from spikingjelly_saf.backends import custom_ops

    params = saf_functional.SAFParameters.from_tau(4.0, v_threshold=0.7, decay_input=True)
    table = saf_functional.coefficient_table(params, 1.5, 3)
    flat = custom_ops.coefficient_tensor(table, torch.device("cpu"))
    expected = torch.tensor([[getattr(k, c) for c in saf_functional.KERNEL_COLUMNS] for k in table],
                            dtype=torch.float32)
    assert torch.equal(flat.view(3, 4), expected)
    assert saf_functional.KERNEL_COLUMNS == ("input", "reset", "carry", "average")
    k = table[0]
    assert k.input == k.weight_sum * params.input_scale and k.average == 1.0 / k.weight_sum
    assert k.reset == params.v_threshold * params.decay * 1.5 and k.carry == params.decay * 1.5


def test_unknown_dtype_is_refused():
    code = surrogate_codes.surrogate_code_by_id(
        surrogate_codes.resolve_surrogate_code(surrogate.Sigmoid(), "cupy"))
    for dtype in ("float64", "float16"):
        with pytest.raises(ValueError, match=dtype):
            kernel_source.cuda_source(code, dtype)


def find_nvrtc():
    """(libnvrtc path, matching include directory) from the nvidia pip packages or a CUDA toolkit."""
    roots = []
    try:
        import nvidia

        roots += [os.path.join(base, sub) for base in nvidia.__path__ for sub in sorted(os.listdir(base))]
    except ImportError:
        pass
    roots += [r for r in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda") if r]
    for root in roots:
        libraries = sorted(glob.glob(os.path.join(root, "lib*", "libnvrtc.so.*")))
        headers = kernel_source.cuda_header_dirs(root)
        if libraries and headers and headers[0].startswith(root):
            return libraries[0], headers[0]
    return None


NVRTC = find_nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="no libnvrtc with CUDA headers found")
def test_every_surrogate_and_dtype_compiles_with_nvrtc():
    library_path, include_dir = NVRTC
    library_dir = os.path.dirname(library_path)
    # NVRTC dlopens its builtins by soname; preloading them makes that work without LD_LIBRARY_PATH.
    for builtins in glob.glob(os.path.join(library_dir, "libnvrtc-builtins.so.*")):
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(library_path)
    options = [o.encode() for o in kernel_source.NVRTC_OPTIONS + ("-arch=compute_80", f"-I{include_dir}")]
    option_array = (ctypes.c_char_p * len(options))(*options)
    failures = []
    for name, source, dtype, _ in all_sources():
        program = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(),
                                        0, None, None) == 0
        status = nvrtc.nvrtcCompileProgram(program, len(options), option_array)
        if status != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            failures.append(f"{name}: {log.value.decode(errors='replace')}")
        else:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetPTX(program, ptx)
            entries = set(re.findall(r"\.entry (\w+)\(", ptx.value.decode()))
            if entries != set(kernel_source.kernel_names(dtype)):
                failures.append(f"{name}: entries {sorted(entries)}")
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    assert not failures, "\n".join(failures)
