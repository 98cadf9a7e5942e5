#!/usr/bin/env python3
"""Create (once) and locate the virtualenvs of the model servers used by `make run` and tests.

Model servers pin their own grpcio/numpy, so each gets its own venv under
$MESHGATE_CACHE (default ~/.cache/meshgate), keyed by a hash of its requirements file:
changing the file makes a fresh venv, an unchanged one is reused across clones.

    server_envs.py ensure triton mlserver   # create what is missing
    server_envs.py python triton            # print the venv's python
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = {
    "triton": HERE / "triton-requirements.txt",
    "mlserver": HERE / "mlserver-requirements.txt",
    "torchserve": HERE / "torchserve-requirements.txt",
}


def cache_root() -> Path:
    return Path(os.environ.get("MESHGATE_CACHE", Path.home() / ".cache" / "meshgate"))


def env_dir(kind: str) -> Path:
    digest = hashlib.sha256(KINDS[kind].read_bytes()).hexdigest()[:12]
    return cache_root() / f"{kind}-{digest}"


def python(kind: str) -> Path:
    return env_dir(kind) / "bin" / "python"


def ensure(kind: str) -> Path:
    venv = env_dir(kind)
    marker = venv / ".complete"
    if marker.exists():
        return python(kind)
    print(f"creating the {kind} environment in {venv} (once; about a minute)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "-r", str(KINDS[kind])], capture_output=True, text=True)
    if done.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"
        errors = [line for line in done.stderr.splitlines() if noise not in line]
        print("\n".join(errors[-30:]), file=sys.stderr)
        raise SystemExit(f"pip install for {kind} failed (exit {done.returncode})")
    marker.touch()
    return python(kind)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("ensure", "python") or any(k not in KINDS for k in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    for kind in argv[1:]:
        path = ensure(kind) if argv[0] == "ensure" else python(kind)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
