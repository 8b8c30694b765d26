#!/usr/bin/env bash
# Regenerate protocol/proto/*_pb2.py from the .proto files (grpcio-tools); tests check they are current.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I protocol/proto --python_out=protocol/proto protocol/proto/cairn.proto
