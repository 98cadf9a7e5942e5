"""Generated code matches the .proto files, imports cleanly, and ships in the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT

PROTOS = ROOT / "protos"


def _protoc(include: list[Path], out: Path, sources: list[str]) -> None:
    bindir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *(f"-I{p}" for p in include),
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out={out}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            *sources,
        ],
        check=True,
        cwd=ROOT,
    )


def _check_fresh(tree: Path, fresh_root: Path) -> None:
    generated = ("_pb2.py", "_pb2.pyi", "_grpc.py", "_grpc.pyi")
    fresh = sorted(p.relative_to(fresh_root) for p in fresh_root.rglob("*") if p.is_file())
    assert fresh, "protoc produced nothing"
    stale = [str(rel) for rel in fresh if (tree / rel).read_bytes() != (fresh_root / rel).read_bytes()]
    assert not stale, f"generated files differ from `make proto` output: {stale}; run `make proto`"
    committed = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.name.endswith(generated))
    assert committed == [r for r in fresh if str(r).endswith(generated)]


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    _protoc([PROTOS], tmp_path, sources)
    _check_fresh(PROTOS, tmp_path)


def test_vendored_backend_protos_have_not_drifted(tmp_path: Path) -> None:
    """TorchServe's protos compile into adapters/torchserve_proto (imports google/rpc/status)."""
    import google.rpc

    google_protos = Path(google.rpc.__path__[0]).parents[1]
    vendored = ROOT / "adapters" / "torchserve_proto"
    sources = sorted(str(p.relative_to(ROOT)) for p in vendored.glob("*.proto"))
    assert sources, "no vendored protos found"
    _protoc([ROOT, google_protos], tmp_path, sources)
    _check_fresh(vendored, tmp_path / "adapters" / "torchserve_proto")


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
