package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/proto"
	spb "google.golang.org/genproto/googleapis/rpc/status"
)

// rawConn writes hand-made frames, for the cases the ttrpc client cannot produce
// (even stream ids, undecodable requests, server-side deadlines it would cut short).
type rawConn struct {
	conn net.Conn
}

func (r *rawConn) sendFrame(streamID uint32, msgType, flags uint8, payload []byte) error {
	hdr := make([]byte, 10)
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(hdr[4:8], streamID)
	hdr[8] = msgType
	hdr[9] = flags
	_, err := r.conn.Write(append(hdr, payload...))
	return err
}

func (r *rawConn) sendRequest(streamID uint32, req *ttrpc.Request) error {
	p, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	return r.sendFrame(streamID, 1, 0, p)
}

// recvResponse reads one frame (waiting at most wait) and decodes it as a Response.
func (r *rawConn) recvResponse(wait time.Duration) (uint32, *ttrpc.Response, error) {
	if err := r.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return 0, nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(r.conn, hdr); err != nil {
		return 0, nil, fmt.Errorf("reading header: %w", err)
	}
	length := binary.BigEndian.Uint32(hdr[0:4])
	streamID := binary.BigEndian.Uint32(hdr[4:8])
	if hdr[8] != 2 {
		return streamID, nil, fmt.Errorf("frame type %d, want 2 (response)", hdr[8])
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r.conn, body); err != nil {
		return streamID, nil, fmt.Errorf("reading body: %w", err)
	}
	var resp ttrpc.Response
	if err := proto.Unmarshal(body, &resp); err != nil {
		return streamID, nil, fmt.Errorf("decoding response: %w", err)
	}
	if resp.Status == nil {
		resp.Status = &spb.Status{}
	}
	return streamID, &resp, nil
}
