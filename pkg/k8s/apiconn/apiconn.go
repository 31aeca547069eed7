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
	"k8s.io/client-go/util/connrotation"
)

// maxSources bounds the local addresses remembered: a node's own, which are few.
const maxSources = 64

// Conns tracks the connections the clients of one rest.Config open.
type Conns struct {
	tracker *connrotation.ConnectionTracker
	dial    connrotation.DialFunc

	mu      sync.Mutex
	sources []netip.Addr // local addresses connections were opened from
	targets [][2]string  // network and address connections were opened to
}

// Track makes cfg's clients dial through the returned Conns (cfg.Dial; one set before
// is kept as the way to dial). Call it before any client is made from cfg.
func Track(cfg *rest.Config) *Conns {
	c := &Conns{tracker: connrotation.NewConnectionTracker(), dial: cfg.Dial}
	if c.dial == nil {
		c.dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	cfg.Dial = c.DialContext
	return c
}

// DialContext opens a connection and tracks it.
func (c *Conns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := c.dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if ap, err := netip.ParseAddrPort(conn.LocalAddr().String()); err == nil {
		if a := ap.Addr().Unmap(); !slices.Contains(c.sources, a) && len(c.sources) < maxSources {
			c.sources = append(c.sources, a)
		}
	}
	if t := [2]string{network, address}; !slices.Contains(c.targets, t) && len(c.targets) < maxSources {
		c.targets = append(c.targets, t)
	}
	c.mu.Unlock()
	return c.tracker.Track(conn), nil
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

// CloseAll closes every open connection: the clients dial again on their next request,
// and the watches resume from where they were.
func (c *Conns) CloseAll() { c.tracker.CloseAll() }

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

// DefaultHealthCheck is the HTTP/2 health check interval Herald's binaries set: a
// connection that died quietly is replaced within about twice this.
const DefaultHealthCheck = 5 * time.Second
