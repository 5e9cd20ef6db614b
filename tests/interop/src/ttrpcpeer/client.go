package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"ttrpcpeer/pb"
)

// env is what every check may use: one shared ttrpc client (one connection, as the
// Kata runtime keeps) and the address for checks that need a connection of their own.
type env struct {
	addr   string
	client *ttrpc.Client
	slow   string
}

type check struct {
	name string
	run  func(e *env) (string, error)
}

var checks = []check{
	{"check", checkServing},
	{"version", checkVersion},
	{"metadata", checkMetadata},
	{"deadline", checkDeadline},
	{"deadline-expired", checkDeadlineExpired},
	{"unknown-method", checkUnknownMethod},
	{"unknown-service", checkUnknownService},
	{"oversize", checkOversize},
	{"concurrent", checkConcurrent},
	{"even-stream", checkEvenStream},
	{"bad-request", checkBadRequest},
	{"slow-deadline", checkSlowDeadline},
}

func runClient(addr string, args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	only := fs.String("only", "", "comma-separated check names (default: all)")
	slow := fs.String("slow", "", "SERVICE/METHOD that blocks for long; enables slow-deadline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, c := range checks {
		known[c.name] = true
	}
	selected := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n != "" && !known[n] {
			return fmt.Errorf("unknown check %q", n)
		}
		if n != "" {
			selected[n] = true
		}
	}
	conn, err := dial(addr)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	e := &env{addr: addr, client: client, slow: *slow}

	failed := 0
	for _, c := range checks {
		if len(selected) > 0 && !selected[c.name] {
			continue
		}
		if c.name == "slow-deadline" && e.slow == "" && !selected[c.name] {
			continue
		}
		detail, err := c.run(e)
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", c.name, err)
		} else {
			fmt.Printf("PASS %s: %s\n", c.name, detail)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func healthCheck(ctx context.Context, c *ttrpc.Client, service string) error {
	var resp pb.HealthCheckResponse
	if err := c.Call(ctx, "grpc.Health", "Check", &pb.CheckRequest{Service: service}, &resp); err != nil {
		return err
	}
	if resp.Status != pb.HealthCheckResponse_SERVING {
		return fmt.Errorf("status %v, want SERVING", resp.Status)
	}
	return nil
}

func expectCode(err error, want codes.Code) (string, error) {
	st, ok := status.FromError(err)
	if err == nil || !ok || st.Code() != want {
		return "", fmt.Errorf("got %v, want code %v", err, want)
	}
	return fmt.Sprintf("%v %q", st.Code(), st.Message()), nil
}

func checkServing(e *env) (string, error) {
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()
	return "SERVING", healthCheck(ctx, e.client, "")
}

func checkVersion(e *env) (string, error) {
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()
	var resp pb.VersionCheckResponse
	if err := e.client.Call(ctx, "grpc.Health", "Version", &pb.CheckRequest{}, &resp); err != nil {
		return "", err
	}
	if resp.AgentVersion == "" {
		return "", fmt.Errorf("empty agent_version (grpc_version %q)", resp.GrpcVersion)
	}
	return fmt.Sprintf("agent_version=%q grpc_version=%q", resp.AgentVersion, resp.GrpcVersion), nil
}

func checkMetadata(e *env) (string, error) {
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()
	md := ttrpc.MD{}
	md.Set("kata-interop", "a", "b")
	md.Set("x-trace-id", "0123456789abcdef")
	return "request with 3 metadata pairs accepted", healthCheck(ttrpc.WithMetadata(ctx, md), e.client, "")
}

func checkDeadline(e *env) (string, error) {
	ctx, cancel := withTimeout(20 * time.Second)
	defer cancel()
	return "call carrying timeout_nano=20s answered", healthCheck(ctx, e.client, "")
}

// checkDeadlineExpired sends timeout_nano=1ns. The Go reference server still runs a
// handler that ignores its context, so OK and DEADLINE_EXCEEDED are both conforming;
// what matters is an answer on the right stream and a connection that keeps working.
func checkDeadlineExpired(e *env) (string, error) {
	r, err := rawDial(e.addr)
	if err != nil {
		return "", err
	}
	defer r.conn.Close()
	req := &ttrpc.Request{Service: "grpc.Health", Method: "Check", TimeoutNano: 1}
	if err := r.sendRequest(1, req); err != nil {
		return "", err
	}
	id, resp, err := r.recvResponse(30 * time.Second)
	if err != nil {
		return "", err
	}
	code := codes.Code(resp.Status.Code)
	if id != 1 || (code != codes.OK && code != codes.DeadlineExceeded) {
		return "", fmt.Errorf("stream %d code %v %q, want stream 1 OK or DeadlineExceeded", id, code, resp.Status.Message)
	}
	if err := rawCheckStillServing(r, 3); err != nil {
		return "", err
	}
	return fmt.Sprintf("answered %v, connection still serving", code), nil
}

func checkUnknownMethod(e *env) (string, error) {
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()
	var resp pb.HealthCheckResponse
	err := e.client.Call(ctx, "grpc.Health", "NoSuchMethod", &pb.CheckRequest{}, &resp)
	return expectCode(err, codes.Unimplemented)
}

func checkUnknownService(e *env) (string, error) {
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()
	var resp pb.HealthCheckResponse
	err := e.client.Call(ctx, "grpc.NoSuchService", "Check", &pb.CheckRequest{}, &resp)
	return expectCode(err, codes.Unimplemented)
}

// checkOversize sends a 5 MiB request: the server must discard it, answer
// RESOURCE_EXHAUSTED on that stream and keep the connection usable.
func checkOversize(e *env) (string, error) {
	ctx, cancel := withTimeout(60 * time.Second)
	defer cancel()
	var resp pb.HealthCheckResponse
	err := e.client.Call(ctx, "grpc.Health", "Check", &pb.CheckRequest{Service: strings.Repeat("x", 5<<20)}, &resp)
	detail, cerr := expectCode(err, codes.ResourceExhausted)
	if cerr != nil {
		return "", cerr
	}
	ctx2, cancel2 := withTimeout(30 * time.Second)
	defer cancel2()
	if err := healthCheck(ctx2, e.client, ""); err != nil {
		return "", fmt.Errorf("after %s, Check on the same connection: %v", detail, err)
	}
	return detail + "; same connection still answers Check", nil
}

func checkConcurrent(e *env) (string, error) {
	const n = 32
	ctx, cancel := withTimeout(60 * time.Second)
	defer cancel()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- healthCheck(ctx, e.client, fmt.Sprintf("svc-%d", i))
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%d concurrent calls on one connection succeeded", n), nil
}

func checkEvenStream(e *env) (string, error) {
	r, err := rawDial(e.addr)
	if err != nil {
		return "", err
	}
	defer r.conn.Close()
	if err := r.sendRequest(2, &ttrpc.Request{Service: "grpc.Health", Method: "Check"}); err != nil {
		return "", err
	}
	return rawExpect(r, 2, codes.InvalidArgument)
}

func checkBadRequest(e *env) (string, error) {
	r, err := rawDial(e.addr)
	if err != nil {
		return "", err
	}
	defer r.conn.Close()
	// 0x0f: field 1 with wire type 7, which no protobuf decoder accepts.
	if err := r.sendFrame(1, 1, 0, []byte{0x0f, 0xff, 0xff}); err != nil {
		return "", err
	}
	return rawExpect(r, 1, codes.InvalidArgument)
}

// checkSlowDeadline calls a method that blocks (e.g. GetOOMEvent) with a 5 s
// timeout_nano, then a Check on the same connection: the Check must be answered first,
// and the slow call must end with DEADLINE_EXCEEDED from the server.
func checkSlowDeadline(e *env) (string, error) {
	if e.slow == "" {
		return "", fmt.Errorf("no -slow SERVICE/METHOD given")
	}
	svc, method, ok := strings.Cut(e.slow, "/")
	if !ok {
		return "", fmt.Errorf("-slow %q is not SERVICE/METHOD", e.slow)
	}
	r, err := rawDial(e.addr)
	if err != nil {
		return "", err
	}
	defer r.conn.Close()
	slow := &ttrpc.Request{Service: svc, Method: method, TimeoutNano: int64(5 * time.Second)}
	if err := r.sendRequest(1, slow); err != nil {
		return "", err
	}
	if err := r.sendRequest(3, &ttrpc.Request{Service: "grpc.Health", Method: "Check"}); err != nil {
		return "", err
	}
	id, resp, err := r.recvResponse(30 * time.Second)
	if err != nil {
		return "", err
	}
	if id != 3 || resp.Status.Code != int32(codes.OK) {
		return "", fmt.Errorf("first answer on stream %d code %v %q, want the Check (stream 3) OK",
			id, codes.Code(resp.Status.Code), resp.Status.Message)
	}
	return rawExpect(r, 1, codes.DeadlineExceeded)
}

func rawDial(addr string) (*rawConn, error) {
	conn, err := dial(addr)
	if err != nil {
		return nil, err
	}
	return &rawConn{conn: conn}, nil
}

// rawExpect reads one response, wants it on stream id with the given code, then
// proves the connection still serves a Check.
func rawExpect(r *rawConn, id uint32, want codes.Code) (string, error) {
	got, resp, err := r.recvResponse(30 * time.Second)
	if err != nil {
		return "", err
	}
	code := codes.Code(resp.Status.Code)
	if got != id || code != want {
		return "", fmt.Errorf("stream %d code %v %q, want stream %d code %v", got, code, resp.Status.Message, id, want)
	}
	if err := rawCheckStillServing(r, id+101); err != nil {
		return "", err
	}
	return fmt.Sprintf("stream %d: %v %q; connection still serving", got, code, resp.Status.Message), nil
}

func rawCheckStillServing(r *rawConn, id uint32) error {
	if id%2 == 0 {
		id++
	}
	if err := r.sendRequest(id, &ttrpc.Request{Service: "grpc.Health", Method: "Check"}); err != nil {
		return fmt.Errorf("follow-up Check: %w", err)
	}
	got, resp, err := r.recvResponse(30 * time.Second)
	if err != nil {
		return fmt.Errorf("follow-up Check: %w", err)
	}
	var hc pb.HealthCheckResponse
	if got != id || resp.Status.Code != 0 {
		return fmt.Errorf("follow-up Check: stream %d code %d %q", got, resp.Status.Code, resp.Status.Message)
	}
	if err := hc.Unmarshal(resp.Payload); err != nil || hc.Status != pb.HealthCheckResponse_SERVING {
		return fmt.Errorf("follow-up Check: status %v err %v", hc.Status, err)
	}
	return nil
}
