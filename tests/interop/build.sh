#!/bin/sh
# Build the Go ttRPC interop peer offline, in GOPATH mode, from Debian's Go packages:
#   golang-go (1.19), golang-github-containerd-ttrpc-dev (1.1.1, gogo/protobuf codec),
#   gogoprotobuf (protoc-gen-gogofaster), protobuf-compiler.
# Usage: tests/interop/build.sh OUTDIR
# Produces OUTDIR/ttrpcpeer (the binary) and OUTDIR/peer.protoset (descriptors for Python).
set -eu
OUT=${1:?usage: build.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SRC="$OUT/gopath/src/ttrpcpeer"

for tool in go protoc protoc-gen-gogofaster; do
    command -v "$tool" >/dev/null || { echo "build.sh: missing $tool" >&2; exit 1; }
done

rm -rf "$SRC"
mkdir -p "$SRC/pb" "$OUT/gocache"
cp "$HERE"/src/ttrpcpeer/*.go "$SRC/"
protoc -I "$HERE/proto" --gogofaster_out=paths=source_relative:"$SRC/pb" health.proto peertest.proto
protoc -I "$HERE/proto" --include_imports --descriptor_set_out="$OUT/peer.protoset" \
    health.proto peertest.proto

cd "$SRC"
env GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local \
    GOPATH="$OUT/gopath:/usr/share/gocode" GOCACHE="$OUT/gocache" \
    go build -trimpath -o "$OUT/ttrpcpeer.new" .
mv "$OUT/ttrpcpeer.new" "$OUT/ttrpcpeer"
