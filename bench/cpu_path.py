"""The kernel path a benchmark measures: `--cpu avx512|avx2|portable` forces bora's kernels
(`BORA_CPU`) and configures the peer for the same instruction set, so AVX2 numbers can be
taken on an AVX-512 machine. Without `--cpu` every engine runs the widest its build allows.

- PyTorch: `ATEN_CPU_CAPABILITY` (avx512, avx2, default) picks ATen's kernels; oneDNN's
  matmuls follow `ONEDNN_MAX_CPU_ISA` (AVX512_CORE, AVX2, SSE41).
- llama.cpp: the ISA is fixed when it is compiled, so `--llama-python` names a Python whose
  `llama_cpp` was built for the path (for AVX2: `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"`, see BENCHMARKS.md); the script prints that
  build's own feature line so a wrong build shows.
"""
import os
import subprocess

CHOICES = ["avx512", "avx2", "portable"]
TORCH_CAPABILITY = {"avx512": "avx512", "avx2": "avx2", "portable": "default"}
ONEDNN_ISA = {"avx512": "AVX512_CORE_VNNI", "avx2": "AVX2", "portable": "SSE41"}


def add_argument(ap):
    ap.add_argument("--cpu", choices=CHOICES,
                    help="force bora's kernel path (BORA_CPU) and the peer's instruction set")


def bora_env(cpu):
    """Environment additions for a bora child."""
    return {"BORA_CPU": cpu} if cpu else {}


def torch_env(cpu):
    """Environment additions for a PyTorch child."""
    if not cpu:
        return {}
    return {"ATEN_CPU_CAPABILITY": TORCH_CAPABILITY[cpu], "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA[cpu]}


def llama_features(python):
    """llama.cpp's own line of compiled CPU features, from the build `python` imports."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip() or "unknown"


def bora_path(bora_bin, model, cpu):
    """bora's own report of the path it runs (`bora info`), under the forced setting."""
    env = dict(os.environ, **bora_env(cpu))
    try:
        out = subprocess.run([str(bora_bin), "info", "--model", str(model)], capture_output=True,
                             text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("kernel path:") or "BORA_CPU" in line:
            return line.split(":", 1)[1].strip() if line.startswith("kernel path:") else line
    return "unknown"
