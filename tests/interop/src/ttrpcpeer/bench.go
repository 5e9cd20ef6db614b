package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"

	"ttrpcpeer/pb"
)

type benchResult struct {
	Conns     int     `json:"conns"`
	Inflight  int     `json:"inflight"`
	Seconds   float64 `json:"seconds"`
	Calls     int     `json:"calls"`
	Errors    int64   `json:"errors"`
	CallsPerS float64 `json:"calls_per_s"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
}

// runBench drives Health.Check from conns connections with inflight goroutines each;
// a short warm-up is excluded from the figures.
func runBench(addr string, args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("bench wants CONNS INFLIGHT SECONDS")
	}
	conns, err1 := strconv.Atoi(args[0])
	inflight, err2 := strconv.Atoi(args[1])
	seconds, err3 := strconv.ParseFloat(args[2], 64)
	if err1 != nil || err2 != nil || err3 != nil || conns < 1 || inflight < 1 || seconds <= 0 {
		return fmt.Errorf("bad CONNS INFLIGHT SECONDS: %v", args)
	}
	clients := make([]*ttrpc.Client, conns)
	for i := range clients {
		conn, err := dial(addr)
		if err != nil {
			return err
		}
		clients[i] = ttrpc.NewClient(conn)
		defer clients[i].Close()
	}

	var measuring atomic.Bool
	var stop atomic.Bool
	var errors atomic.Int64
	lat := make([][]time.Duration, conns*inflight)
	var wg sync.WaitGroup
	for w := range lat {
		wg.Add(1)
		go func(w int, c *ttrpc.Client) {
			defer wg.Done()
			req := &pb.CheckRequest{}
			var resp pb.HealthCheckResponse
			for !stop.Load() {
				t0 := time.Now()
				err := c.Call(context.Background(), "grpc.Health", "Check", req, &resp)
				d := time.Since(t0)
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errors.Add(1)
					continue
				}
				lat[w] = append(lat[w], d)
			}
		}(w, clients[w%conns])
	}
	time.Sleep(500 * time.Millisecond)
	measuring.Store(true)
	start := time.Now()
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	measuring.Store(false)
	elapsed := time.Since(start).Seconds()
	stop.Store(true)
	wg.Wait()

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	res := benchResult{
		Conns: conns, Inflight: inflight, Seconds: elapsed, Calls: len(all), Errors: errors.Load(),
		CallsPerS: float64(len(all)) / elapsed,
		P50Us:     percentileUs(all, 0.50), P99Us: percentileUs(all, 0.99),
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func percentileUs(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return float64(sorted[i].Nanoseconds()) / 1e3
}
