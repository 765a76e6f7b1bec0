"""Regenerate the committed gRPC code of service/grpc/protos/ from the vendored .proto files.

    make grpc-protos       # a scratch venv (.venv/grpc-tools) with grpcio-tools 1.81.1, then this script

The .proto files are Triton's `grpc_service.proto` and `model_config.proto` (BSD-3, service/grpc/protos/LICENSE),
vendored unchanged from triton-inference-server/common (commit in service/grpc/protos/README.md). They are
compiled under their own file names, so the descriptors are byte-identical to the ones `tritonclient.grpc`
ships and both can live in one process (protobuf's default pool accepts an identical file twice, never two
definitions of `inference.ModelInferRequest`). protoc writes top-level imports (`import model_config_pb2`);
they are rewritten to package imports.

The protoc of grpcio-tools 1.81.1 writes protobuf 6.33.5 code, which both protobuf 6.33+ and 7 run: tritonclient's
grpc extra needs protobuf < 7, Ray Serve's grpcio-reflection >= 1.85 needs protobuf 7, and the service must
import under either (pyproject.toml: protobuf>=6.33.5,<8, grpcio>=1.81.1). A newer grpcio-tools would write code
that needs protobuf 7, so this script refuses another version unless --any-tools.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import version
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "service" / "grpc" / "protos"
PACKAGE = "service.grpc.protos"
SOURCES = ("model_config.proto", "grpc_service.proto")
TOOLS = "1.81.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--any-tools", action="store_true", help=f"allow a grpcio-tools other than {TOOLS}")
    args = parser.parse_args()
    if version("grpcio-tools") != TOOLS and not args.any_tools:
        sys.exit(f"grpcio-tools {version('grpcio-tools')} is installed; the committed code is made by {TOOLS} "
                 "(see the docstring): run `make grpc-protos`, or pass --any-tools")
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
