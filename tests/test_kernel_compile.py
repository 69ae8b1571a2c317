"""The CUDA source of the CuPy backend compiles with nvcc, for every surrogate and dtype.

Skipped when ``nvcc`` is not on PATH. Compiling to PTX needs no GPU. The options are those the CuPy
backend gives NVRTC.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import re
import shutil
import subprocess

import pytest
from spikingjelly.activation_based import surrogate

from spikingjelly_saf.backends import kernel_source, surrogate_codes
from spikingjelly_saf.surrogate import SpikeRepresentation

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not on PATH")


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


def test_every_surrogate_and_dtype_compiles(tmp_path):
    jobs = []
    for sg, dtype in itertools.product(SURROGATES, kernel_source.CUDA_DTYPES):
        code = surrogate_codes.surrogate_code_by_id(surrogate_codes.resolve_surrogate_code(sg, "cupy"))
        jobs.append((f"{type(sg).__name__}_{dtype}", kernel_source.cuda_source(code, dtype), dtype))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: compile_to_ptx(job[1], tmp_path, job[0]), jobs))
    failures = [f"{name}:\n{result.stderr}" for (name, _, _), (result, _) in zip(jobs, results)
                if result.returncode != 0]
    assert not failures, "\n".join(failures)
    for (name, _, dtype), (_, ptx) in zip(jobs, results):
        text = ptx.read_text()
        entries = set(re.findall(r"\.entry (\w+)\(", text))
        assert entries == set(kernel_source.kernel_names(dtype)), (name, entries)
        # No FMA in the neuron update: the forward must round like PyTorch's separate mul and add.
        for entry in ("saf_forward", "saf_forward_pairs"):
            if entry in entries:
                assert "fma." not in entry_body(text, entry), (name, entry)


def test_paired_kernels_use_vector_loads(tmp_path):
    code = surrogate_codes.surrogate_code_by_id(
        surrogate_codes.resolve_surrogate_code(surrogate.Sigmoid(), "cupy"))
    result, ptx = compile_to_ptx(kernel_source.cuda_source(code, "float16"), tmp_path, "pairs")
    assert result.returncode == 0, result.stderr
    body = entry_body(ptx.read_text(), "saf_forward_pairs")
    assert re.search(r"ld\.global(\.nc)?\.(b32|u32)", body), "half2 loads should be 32-bit"


def test_unknown_dtype_is_refused():
    code = surrogate_codes.surrogate_code_by_id(
        surrogate_codes.resolve_surrogate_code(surrogate.Sigmoid(), "cupy"))
    with pytest.raises(ValueError, match="float64"):
        kernel_source.cuda_source(code, "float64")
