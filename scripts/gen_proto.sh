#!/usr/bin/env bash
# Regenerate cairn/protocol/proto/*_pb2.py from the .proto files (grpcio-tools); tests check they are current.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I cairn/protocol/proto --python_out=cairn/protocol/proto cairn/protocol/proto/cairn.proto
