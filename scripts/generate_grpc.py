"""Regenerate the committed gRPC code of service/grpc/protos/ from the vendored .proto files.

    .venv/bin/python scripts/generate_grpc.py          # or: make grpc-protos

The .proto files are Triton's `grpc_service.proto` and `model_config.proto` (BSD-3, service/grpc/protos/LICENSE),
vendored unchanged from triton-inference-server/common (commit in service/grpc/protos/README.md). They are
compiled under their own file names, so the descriptors are byte-identical to the ones `tritonclient.grpc`
ships and both can live in one process (protobuf's default pool accepts an identical file twice, never two
definitions of `inference.ModelInferRequest`). protoc writes top-level imports (`import model_config_pb2`);
they are rewritten to package imports. Needs grpcio-tools (a dev dependency); the generated code needs
protobuf >= the "Protobuf Python Version" in its header (pyproject.toml pins the range).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "service" / "grpc" / "protos"
PACKAGE = "service.grpc.protos"
SOURCES = ("model_config.proto", "grpc_service.proto")


def main() -> None:
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto bundled with grpcio-tools
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={PROTOS}", f"--pyi_out={PROTOS}",
            f"--grpc_python_out={PROTOS}", *(str(PROTOS / name) for name in SOURCES)]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for generated in sorted(PROTOS.glob("*_pb2*.py*")):
        text = generated.read_text()
        fixed = re.sub(r"^import (\w+_pb2) as (\w+)$", rf"from {PACKAGE} import \1 as \2", text, flags=re.M)
        fixed = re.sub(r"^import (\w+_pb2)$", rf"from {PACKAGE} import \1", fixed, flags=re.M)
        if fixed != text:
            generated.write_text(fixed)
        print(f"wrote {generated.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
