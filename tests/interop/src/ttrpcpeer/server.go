package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"ttrpcpeer/pb"
)

// Fixed Version answers, so a client test can tell it reached this peer.
const (
	peerAgentVersion = "ttrpcpeer-go"
	peerGrpcVersion  = "containerd-ttrpc-1.1.1"
)

func runServer(addr string) error {
	path, err := socketPath(addr)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(path, "@") {
		_ = os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	srv.Register("grpc.Health", healthMethods())
	srv.Register("ttrpcpeer.Test", testMethods())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.Close() // closes the listener, which removes a path socket
	}()
	fmt.Println("READY", addr)
	err = srv.Serve(context.Background(), l)
	if err == ttrpc.ErrServerClosed {
		return nil
	}
	return err
}

func healthMethods() map[string]ttrpc.Method {
	return map[string]ttrpc.Method{
		"Check": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req pb.CheckRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &pb.HealthCheckResponse{Status: pb.HealthCheckResponse_SERVING}, nil
		},
		"Version": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req pb.CheckRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &pb.VersionCheckResponse{GrpcVersion: peerGrpcVersion, AgentVersion: peerAgentVersion}, nil
		},
	}
}

func testMethods() map[string]ttrpc.Method {
	return map[string]ttrpc.Method{
		"Fail": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req pb.FailRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return nil, status.Error(codes.Code(req.Code), req.Message)
		},
		"Sleep": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req pb.SleepRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			var wake <-chan time.Time // millis 0: until the deadline (or the connection) ends
			if req.Millis > 0 {
				t := time.NewTimer(time.Duration(req.Millis) * time.Millisecond)
				defer t.Stop()
				wake = t.C
			}
			select {
			case <-wake:
				return &pb.Empty{}, nil
			case <-ctx.Done():
				return nil, ctx.Err() // the library maps it to DEADLINE_EXCEEDED
			}
		},
		"Echo": echo,
	}
}

// echo reports back what the server saw: text, metadata (sorted) and the deadline.
func echo(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
	var req pb.EchoRequest
	if err := unmarshal(&req); err != nil {
		return nil, err
	}
	reply := &pb.EchoReply{Text: req.Text, Padding: make([]byte, req.PadBytes)}
	if md, ok := ttrpc.GetMetadata(ctx); ok {
		keys := make([]string, 0, len(md))
		for k := range md {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range md[k] {
				reply.Metadata = append(reply.Metadata, &pb.KeyValue{Key: k, Value: v})
			}
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		reply.HasDeadline = true
		reply.DeadlineRemainingMs = time.Until(dl).Milliseconds()
	}
	return reply, nil
}
