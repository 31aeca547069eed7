package apiconn

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// maxSources bounds the local addresses remembered: a node's own, which are few.
const maxSources = 64

// dialTries bounds the dials of one DialContext: a connection whose generation was
// closed while it was being opened is closed and dialled again.
const dialTries = 3

// Conns tracks the connections the clients of one rest.Config open, by generation: the
// connections opened before an event that broke them are retired, and closed later,
// while those opened after it are left alone. (client-go's connrotation closes all or
// nothing.)
type Conns struct {
	dial func(ctx context.Context, network, address string) (net.Conn, error)

	mu      sync.Mutex
	gen     uint64              // the generation of the connections being opened now
	retired uint64              // generations up to this one are to be closed
	closed  uint64              // generations up to this one were closed
	open    map[*tracked]uint64 // the open connections and their generations
	sources []netip.Addr        // local addresses connections were opened from
	targets [][2]string         // network and address connections were opened to
}

// tracked is a connection Conns tracks; closing it forgets it.
type tracked struct {
	net.Conn
	c *Conns
}

func (t *tracked) Close() error {
	t.c.mu.Lock()
	delete(t.c.open, t)
	t.c.mu.Unlock()
	return t.Conn.Close()
}

// Track makes cfg's clients dial through the returned Conns (cfg.Dial; one set before
// is kept as the way to dial). Call it before any client is made from cfg.
func Track(cfg *rest.Config) *Conns {
	c := &Conns{dial: cfg.Dial, gen: 1, open: map[*tracked]uint64{}}
	if c.dial == nil {
		c.dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	cfg.Dial = c.DialContext
	return c
}

// DialContext opens a connection and tracks it in the generation current when the dial
// began: an event read while the connection was being opened may have broken it too.
func (c *Conns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	for try := 1; ; try++ {
		c.mu.Lock()
		gen := c.gen
		c.mu.Unlock()
		conn, err := c.dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if gen <= c.closed { // retired and closed while it was opened: the routes are back, open another
			c.mu.Unlock()
			conn.Close()
			if try == dialTries {
				return nil, fmt.Errorf("dial %s %s: the connections were replaced during each of %d dials", network, address, dialTries)
			}
			continue
		}
		t := &tracked{Conn: conn, c: c}
		c.open[t] = gen
		if ap, err := netip.ParseAddrPort(conn.LocalAddr().String()); err == nil {
			if a := ap.Addr().Unmap(); !slices.Contains(c.sources, a) && len(c.sources) < maxSources {
				c.sources = append(c.sources, a)
			}
		}
		if t := [2]string{network, address}; !slices.Contains(c.targets, t) && len(c.targets) < maxSources {
			c.targets = append(c.targets, t)
		}
		c.mu.Unlock()
		return t, nil
	}
}

// Retire marks every connection open now, or being opened, for closing by
// CloseRetired; connections whose dial begins after it are not.
func (c *Conns) Retire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retired = c.gen
	c.gen++
}

// CloseRetired closes the connections retired so far, calling before first when there
// are any: the clients dial again on their next request, and the watches resume from
// where they were. Connections whose dial began after the last Retire stay open.
func (c *Conns) CloseRetired(before func()) {
	c.mu.Lock()
	var doomed []*tracked
	for t, gen := range c.open {
		if gen <= c.retired {
			doomed = append(doomed, t)
			delete(c.open, t)
		}
	}
	c.closed = c.retired
	c.mu.Unlock()
	if len(doomed) == 0 {
		return
	}
	before()
	for _, t := range doomed {
		t.Conn.Close()
	}
}

// Reachable reports whether a new connection to one of the addresses connections were
// opened to can be made now (none opened yet: true). The test connection is closed at
// once and never tracked.
func (c *Conns) Reachable(ctx context.Context, limit time.Duration) bool {
	c.mu.Lock()
	targets := slices.Clone(c.targets)
	c.mu.Unlock()
	if len(targets) == 0 {
		return true
	}
	for _, t := range targets {
		dctx, cancel := context.WithTimeout(ctx, limit)
		conn, err := c.dial(dctx, t[0], t[1])
		cancel()
		if err == nil {
			conn.Close()
			return true
		}
	}
	return false
}

// From reports whether a connection was opened from one of addrs.
func (c *Conns) From(addrs []netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(addrs, func(a netip.Addr) bool { return slices.Contains(c.sources, a.Unmap()) })
}

// The environment variables client-go's transports read their HTTP/2 health check
// from (k8s.io/apimachinery/pkg/util/net): after ReadIdle seconds without a frame the
// client pings, and closes the connection when no answer comes within Ping seconds.
const (
	EnvReadIdle = "HTTP2_READ_IDLE_TIMEOUT_SECONDS"
	EnvPing     = "HTTP2_PING_TIMEOUT_SECONDS"
)

// HealthCheck sets the HTTP/2 health check of the transports made after it: after
// every without a frame the client pings, and closes the connection when the ping is not
// answered within every more. A variable already set in the environment wins. every
// must be whole seconds, at least one.
func HealthCheck(every time.Duration) error {
	if every < time.Second || every%time.Second != 0 {
		return fmt.Errorf("API health check interval %s: want whole seconds, at least 1s", every)
	}
	s := strconv.Itoa(int(every / time.Second))
	for _, k := range []string{EnvReadIdle, EnvPing} {
		if _, set := os.LookupEnv(k); !set {
			if err := os.Setenv(k, s); err != nil {
				return fmt.Errorf("set %s=%s: %w", k, s, err)
			}
		}
	}
	return nil
}

// HealthCheckUsage describes the --api-health-check flag both binaries take.
const HealthCheckUsage = "after this much silence on a connection to the API server, ping it, and replace it when the ping is not answered within as long (client-go alone waits 30 s + 15 s, and plans from a stale view meanwhile); whole seconds; $HTTP2_READ_IDLE_TIMEOUT_SECONDS and $HTTP2_PING_TIMEOUT_SECONDS win"

// DefaultHealthCheck is the HTTP/2 health check interval Herald's binaries set: a
// connection that died quietly is replaced within about twice this.
const DefaultHealthCheck = 5 * time.Second
