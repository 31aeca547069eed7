package process

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/heraldlb/herald/pkg/bgp"
)

// requestTimeout bounds one request to the BGP speaker inside the BGP process; the
// speaker's side waits a little longer before it gives the process up.
const requestTimeout = 10 * time.Second

// Server is the BGP process's end: it answers the speaker's requests with a bgp.Speaker
// and tells it of session events.
type Server struct {
	out *writer
}

// NewServer returns the end that writes to w (the process's standard output).
func NewServer(w io.Writer) *Server { return &Server{out: newWriter(w)} }

// Session tells the speaker of a session event; it is the bgp.Speaker's OnSession.
func (s *Server) Session(e bgp.SessionEvent) { _ = s.out.write(reply{Session: &e}) }

// Serve answers the requests read from r (the process's standard input) until it ends:
// the speaker closed it, or died. Requests are answered one at a time, in order.
func (s *Server) Serve(r io.Reader, b bgp.Speaker, g prometheus.Gatherer) error {
	sc := lines(r)
	for sc.Scan() {
		var req request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("a request that is not one: %w", err)
		}
		if err := s.out.write(answer(req, b, g)); err != nil {
			return fmt.Errorf("answering the speaker: %w", err)
		}
	}
	return sc.Err()
}

func answer(req request, b bgp.Speaker, g prometheus.Gatherer) reply {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	out := reply{ID: req.ID}
	var err error
	switch req.Op {
	case opPeers:
		err = b.SetPeers(ctx, req.Peers)
	case opRoutes:
		err = b.SetRoutes(ctx, req.Routes)
	case opMetrics:
		out.Metrics, err = gather(g)
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		out.Error = err.Error()
	}
	return out
}

func gather(g prometheus.Gatherer) ([][]byte, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(mfs))
	for _, mf := range mfs {
		b, err := proto.Marshal(mf)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}
