"""Generated code matches the .proto files, imports cleanly, and ships in the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT

PROTOS = ROOT / "protos"


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bindir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(PROTOS),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            *sources,
        ],
        check=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc produced nothing"
    stale = [str(rel) for rel in fresh if (PROTOS / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"generated files differ from `make proto` output: {stale}; run `make proto`"
    committed = sorted(
        p.relative_to(PROTOS)
        for p in PROTOS.rglob("*")
        if p.name.endswith(("_pb2.py", "_pb2.pyi", "_grpc.py", "_grpc.pyi"))
    )
    assert committed == [
        r for r in fresh if str(r).endswith(("_pb2.py", "_pb2.pyi", "_grpc.py", "_grpc.pyi"))
    ]


def test_stubs_import_without_path_tricks(tmp_path: Path) -> None:
    code = "from meshgate.v1 import inference_pb2_grpc, models_pb2_grpc, tensor_pb2; print(tensor_pb2.DATA_TYPE_FP32)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "11"


def test_wheel_ships_stubs_and_protos(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("meshgate-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "inference_pb2.py",
        "inference_pb2.pyi",
        "inference_pb2_grpc.py",
        "inference.proto",
        "py.typed",
    ):
        assert f"meshgate/v1/{name}" in names
    assert "gateway/default.yaml" in names
