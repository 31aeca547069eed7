package process

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/heraldlb/herald/pkg/bgp"
	"github.com/heraldlb/herald/pkg/logging"
	"github.com/heraldlb/herald/pkg/runner"
)

// Options configure a Client.
type Options struct {
	Path string   // the BGP process's executable; required
	Args []string // its arguments
	// OnSession is told of the BGP process's session events, on the goroutine that reads
	// its output: it must not block.
	OnSession func(bgp.SessionEvent)
	Stderr    io.Writer // the BGP process's log; default os.Stderr
	// Backoff and MaxBackoff bound how soon a BGP process that exited is started again
	// (doubling while it keeps exiting within a minute of its start); defaults 1s and 30s.
	Backoff, MaxBackoff time.Duration
	Logger              *slog.Logger
}

// Client is the speaker's bgp.Speaker: it runs the BGP process while this node has BGP
// peers, hands it the whole desired state, starts it again when it exits, and serves
// its metrics as a prometheus.Gatherer. Nothing runs before Run.
type Client struct {
	opts   Options
	log    *slog.Logger
	runner *runner.Runner
	wg     sync.WaitGroup // the goroutine of each BGP process

	mu        sync.Mutex // serializes the requests; guards what follows
	peers     []bgp.Peer // desired
	routes    []bgp.Route
	child     *child // nil: no BGP process
	stopped   bool
	backoff   time.Duration // before the next start after an exit
	notBefore time.Time     // no start before this
}

var _ bgp.Speaker = (*Client)(nil)

// The BGP process's lifetime.
const (
	stopTimeout = 5 * time.Second // closing its input to exiting: withdrawals, then Ceases
	stableRun   = time.Minute     // a process that ran this long resets the restart backoff
	replyGrace  = 5 * time.Second // beyond requestTimeout, before the process is taken for hung
)

// child is one BGP process.
type child struct {
	cmd     *exec.Cmd
	stdin   io.Closer
	in      *writer
	replies chan reply    // answers, from the reader
	exited  chan struct{} // closed once it exited; err says how
	err     error
	started time.Time

	// Guarded by Client.mu:
	nextID                  uint64
	sentPeers               []bgp.Peer // what it holds, when known
	sentRts                 []bgp.Route
	peersKnown, routesKnown bool
}

// New returns a Client of the BGP process at opts.Path.
func New(opts Options) (*Client, error) {
	if opts.Path == "" {
		return nil, errors.New("process: the BGP process's Path is required")
	}
	opts.Backoff = cmp.Or(opts.Backoff, time.Second)
	opts.MaxBackoff = cmp.Or(opts.MaxBackoff, 30*time.Second)
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	c := &Client{opts: opts, log: logging.OrDiscard(opts.Logger)}
	c.runner = runner.New(runner.Options{
		Sync: func(ctx context.Context, _ bool) error { return c.apply(ctx) }, ResyncPeriod: 30 * time.Second,
		Backoff: opts.Backoff, MaxBackoff: opts.MaxBackoff,
		OnFailure: func(err error, in time.Duration) {
			c.log.Warn("the BGP process does not hold the desired state; retrying", "err", err, "retryIn", in)
		},
		OnRecovery: func(int) { c.log.Info("the BGP process holds the desired state again") },
	})
	return c, nil
}

// SetPeers hands over the whole set of BGP sessions this node should have. The BGP
// process runs while it is not empty.
func (c *Client) SetPeers(ctx context.Context, peers []bgp.Peer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers = peers
	return c.applyLocked(ctx)
}

// SetRoutes hands over the whole set of routes to advertise.
func (c *Client) SetRoutes(ctx context.Context, routes []bgp.Route) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.routes = routes
	return c.applyLocked(ctx)
}

// Run keeps the BGP process in line with the desired state (starting it again after it
// exits, with backoff) until ctx ends; then it stops it: the process withdraws its
// routes and closes its sessions with a Cease.
func (c *Client) Run(ctx context.Context) error {
	err := c.runner.Run(ctx)
	c.mu.Lock()
	c.stopped = true
	c.stopLocked()
	c.mu.Unlock()
	c.wg.Wait()
	return err
}

func (c *Client) apply(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applyLocked(ctx)
}

// applyLocked runs the BGP process when there are peers, stops it when there are none,
// and sends it whatever it does not hold yet.
func (c *Client) applyLocked(ctx context.Context) error {
	c.reapLocked()
	if len(c.peers) == 0 {
		c.stopLocked() // nothing to speak to: no process, no memory spent on it
		return nil
	}
	if c.stopped {
		return errors.New("the BGP process is stopped")
	}
	if c.child == nil {
		if time.Now().Before(c.notBefore) {
			return errors.New("the BGP process exited; it starts again after a backoff")
		}
		if err := c.startLocked(); err != nil {
			return err
		}
	}
	ch := c.child
	if !ch.peersKnown || !slices.Equal(c.peers, ch.sentPeers) {
		ch.peersKnown = false
		if _, err := c.callLocked(ctx, ch, request{Op: opPeers, Peers: c.peers}); err != nil {
			return fmt.Errorf("BGP peers: %w", err)
		}
		ch.sentPeers, ch.peersKnown = slices.Clone(c.peers), true
	}
	if !ch.routesKnown || !slices.EqualFunc(c.routes, ch.sentRts, bgp.Route.Equal) {
		ch.routesKnown = false
		if _, err := c.callLocked(ctx, ch, request{Op: opRoutes, Routes: c.routes}); err != nil {
			return fmt.Errorf("BGP routes: %w", err)
		}
		ch.sentRts, ch.routesKnown = slices.Clone(c.routes), true
	}
	return nil
}

// Gather returns the BGP process's metrics (its sessions, routes and BFD), none while it
// does not run.
func (c *Client) Gather() ([]*dto.MetricFamily, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reapLocked()
	if c.child == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	r, err := c.callLocked(ctx, c.child, request{Op: opMetrics})
	if err != nil {
		return nil, fmt.Errorf("the BGP process's metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(r.Metrics))
	for _, b := range r.Metrics {
		mf := &dto.MetricFamily{}
		if err := proto.Unmarshal(b, mf); err != nil {
			return nil, fmt.Errorf("the BGP process's metrics: %w", err)
		}
		out = append(out, mf)
	}
	return out, nil
}

// callLocked sends req and waits for its answer. A process that does not answer in time
// is killed (it is hung; the next apply starts another).
func (c *Client) callLocked(ctx context.Context, ch *child, req request) (reply, error) {
	ch.nextID++
	req.ID = ch.nextID
	if err := ch.in.write(req); err != nil {
		return reply{}, fmt.Errorf("writing to the BGP process: %w", err)
	}
	hung := time.NewTimer(requestTimeout + replyGrace)
	defer hung.Stop()
	for {
		select {
		case r := <-ch.replies:
			if r.ID != req.ID {
				continue // the answer to a request given up on
			}
			if r.Error != "" {
				return r, errors.New(r.Error)
			}
			return r, nil
		case <-ch.exited:
			return reply{}, fmt.Errorf("the BGP process exited (%v)", ch.err)
		case <-ctx.Done():
			return reply{}, ctx.Err()
		case <-hung.C:
			c.log.Error("the BGP process does not answer; killing it", "pid", ch.cmd.Process.Pid)
			_ = ch.cmd.Process.Kill()
			<-ch.exited
			return reply{}, errors.New("the BGP process did not answer")
		}
	}
}

// startLocked starts a BGP process and the goroutine that reads it.
func (c *Client) startLocked() error {
	cmd := exec.Command(c.opts.Path, c.opts.Args...)
	cmd.Stderr = c.opts.Stderr
	// The process dies with the speaker, however the speaker ends: its sessions must not
	// outlive the node's announcements.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		stdin.Close()
		return err
	}
	ch := &child{cmd: cmd, stdin: stdin, in: newWriter(stdin), replies: make(chan reply, 16), exited: make(chan struct{})}
	started := make(chan error, 1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		// The death signal follows the thread that started the process, not the
		// process: this goroutine keeps its thread for the child's whole life.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		ch.started = time.Now()
		started <- nil
		ch.read(stdout, c.opts.OnSession, c.log)
		ch.err = cmd.Wait()
		close(ch.exited)
		c.exited(ch)
	}()
	if err := <-started; err != nil {
		stdin.Close()
		stdout.Close()
		return fmt.Errorf("starting the BGP process %s: %w", c.opts.Path, err)
	}
	c.child = ch
	c.log.Info("BGP process started", "pid", cmd.Process.Pid)
	return nil
}

// read hands the answers and session events of the process on until its output ends.
func (ch *child) read(r io.Reader, onSession func(bgp.SessionEvent), log *slog.Logger) {
	sc := lines(r)
	for sc.Scan() {
		var msg reply
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			log.Warn("a line from the BGP process that is not a message; dropped", "err", err)
			continue
		}
		if msg.Session != nil {
			if onSession != nil {
				onSession(*msg.Session)
			}
			continue
		}
		select {
		case ch.replies <- msg:
		default: // nobody waits for it: the answer to a request given up on
		}
	}
	_, _ = io.Copy(io.Discard, r) // a line too long: still read to the end, so that it can exit
}

// exited learns that ch ended, on the goroutine that waited for it.
func (c *Client) exited(ch *child) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.child == ch {
		c.reapLocked()
	}
}

// reapLocked forgets a BGP process that exited: unless the Client stopped it, that is a
// failure, said once, and it is started again after a backoff.
func (c *Client) reapLocked() {
	ch := c.child
	if ch == nil {
		return
	}
	select {
	case <-ch.exited:
	default:
		return // still runs
	}
	c.child = nil
	if time.Since(ch.started) >= stableRun {
		c.backoff = 0
	}
	c.backoff = min(max(c.opts.Backoff, 2*c.backoff), c.opts.MaxBackoff)
	c.notBefore = time.Now().Add(c.backoff)
	c.log.Error("the BGP process exited; its sessions are down until it runs again", "err", ch.err, "restartIn", c.backoff)
	c.runner.Poke()
}

// stopLocked stops the BGP process, if one runs: its input closes, so it withdraws its
// routes and closes its sessions; one that takes too long is killed.
func (c *Client) stopLocked() {
	ch := c.child
	if ch == nil {
		return
	}
	c.child = nil
	ch.stdin.Close()
	select {
	case <-ch.exited:
	case <-time.After(stopTimeout):
		c.log.Warn("the BGP process did not stop in time; killing it", "pid", ch.cmd.Process.Pid)
		_ = ch.cmd.Process.Kill()
		<-ch.exited
	}
	c.log.Info("BGP process stopped", "pid", ch.cmd.Process.Pid)
}
