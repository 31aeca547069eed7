package process

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"

	"github.com/heraldlb/herald/pkg/bgp"
)

// The two processes speak JSON, one message a line: the speaker sends requests on the
// BGP process's standard input, and reads the replies, and the session events it did not
// ask for, on its standard output. Its standard error is the speaker's, for its log.

// Operations a request asks for.
const (
	opPeers   = "peers"   // SetPeers with Peers
	opRoutes  = "routes"  // SetRoutes with Routes
	opMetrics = "metrics" // the BGP process's metrics, gathered
)

type request struct {
	ID     uint64      `json:"id"`
	Op     string      `json:"op"`
	Peers  []bgp.Peer  `json:"peers,omitempty"`
	Routes []bgp.Route `json:"routes,omitempty"`
}

// reply answers the request of its ID; a reply with ID 0 is a session event.
type reply struct {
	ID      uint64            `json:"id,omitempty"`
	Error   string            `json:"error,omitempty"`
	Metrics [][]byte          `json:"metrics,omitempty"` // each a dto.MetricFamily, protobuf-encoded
	Session *bgp.SessionEvent `json:"session,omitempty"`
}

// maxLine bounds one message: 5,000 routes with communities fit many times over.
const maxLine = 64 << 20

// lines reads the messages of r one by one.
func lines(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	return sc
}

// writer writes whole messages, one at a time, from any goroutine.
type writer struct {
	mu  sync.Mutex
	enc *json.Encoder // Encode ends each message with a newline
}

func newWriter(w io.Writer) *writer { return &writer{enc: json.NewEncoder(w)} }

func (w *writer) write(msg any) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(msg)
}
