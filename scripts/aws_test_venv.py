#!/usr/bin/env python3
"""The S3 server `bora deploy bedrock`'s tests upload to: moto's server (`moto[server]`, pinned)
in `.venv-aws` at the repository root, created or completed here and left in place.

`crates/bora/tests/bedrock_cli.rs` starts `.venv-aws/bin/moto_server` on a loopback port for
each test (override the path with BORA_MOTO_SERVER). scripts/test.sh runs this first; the
install takes about a minute the first time, nothing afterwards.
"""
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-aws"
PACKAGES = ["moto[server]==5.1.18"]
MARKER = VENV / "bora-packages.txt"


def main():
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.create(VENV, with_pip=True)
    wanted = "\n".join(PACKAGES)
    if not MARKER.exists() or MARKER.read_text() != wanted:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        MARKER.write_text(wanted)
    server = VENV / "bin" / "moto_server"
    if not server.exists():
        sys.exit(f"{server} is missing after the install")
    print(server)


if __name__ == "__main__":
    main()
