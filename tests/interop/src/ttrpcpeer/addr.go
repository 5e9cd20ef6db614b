package main

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// socketPath turns unix:///path, unix://@name or a bare path into what net.Dial wants
// (Go spells Linux abstract sockets with a leading '@').
func socketPath(addr string) (string, error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		return strings.TrimPrefix(addr, "unix://"), nil
	case strings.Contains(addr, "://"):
		return "", fmt.Errorf("unsupported address %q (only unix sockets)", addr)
	default:
		return addr, nil
	}
}

func dial(addr string) (net.Conn, error) {
	path, err := socketPath(addr)
	if err != nil {
		return nil, err
	}
	return net.DialTimeout("unix", path, 10*time.Second)
}
