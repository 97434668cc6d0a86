"""The one virtual environment the fixture scripts run in: `.venv-fixtures` at the repo root,
with the reference libraries whose outputs bora's tests are checked against.

Each `make_*_fixtures.py` calls `ensure_venv(__file__)` before importing them: outside the venv
it creates or completes the venv and re-runs the script inside it. Versions are pinned where a
fixture's bytes depend on them.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-fixtures"
PACKAGES = [
    "mistral-common==1.13.1", "gguf==0.19.0", "transformers==5.24.0", "peft==0.21.2", "torch",
    "safetensors", "numpy", "tokenizers", "sentencepiece", "tiktoken", "accelerate", "tensorboard",
    "huggingface_hub==2.5.0", "mistralai==3.8.0", "bitsandbytes==0.50.2",
]


def ensure_venv(script: str, venv: Path = VENV, packages: list = PACKAGES) -> None:
    """Re-executes `script` inside `venv` (`.venv-fixtures` unless a script needs only a few
    packages and names a smaller one), creating it or installing what it lacks."""
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    wanted = "\n".join(packages)
    marker = venv / "bora-packages.txt"
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", *packages])
        marker.write_text(wanted)
    os.execv(str(python), [str(python), script, *sys.argv[1:]])
