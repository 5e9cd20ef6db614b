// Command ttrpcpeer is an independent ttRPC peer built on the Go reference library
// (github.com/containerd/ttrpc 1.1.1). It checks our Python server (client mode),
// serves as a reference server for our Python client (server mode), and generates
// load for benchmarks (bench mode).
package main

import (
	"fmt"
	"os"
)

const usage = `usage:
  ttrpcpeer client ADDR [-only a,b] [-slow SERVICE/METHOD]   run interop checks against a server
  ttrpcpeer server ADDR                                      serve grpc.Health and ttrpcpeer.Test
  ttrpcpeer bench ADDR CONNS INFLIGHT SECONDS                Health.Check load, prints JSON
ADDR is unix:///path, unix://@abstract or a plain socket path.`

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "client":
		err = runClient(os.Args[2], os.Args[3:])
	case "server":
		err = runServer(os.Args[2])
	case "bench":
		err = runBench(os.Args[2], os.Args[3:])
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ttrpcpeer:", err)
		os.Exit(1)
	}
}
