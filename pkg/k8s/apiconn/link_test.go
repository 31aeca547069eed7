package apiconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/heraldlb/herald/hack/netlab"
)

// flapLab is a client namespace that reaches a server over link a0, through a route via
// a gateway that goes with the link, masqueraded on its way out as kube-proxy
// masquerades a host-network pod's traffic to the kubernetes Service; and a second link
// a1 with no address, as a pod's veth on the node. a0 holds the client's address, or,
// unnumbered, none (the address is on lo, as on a routed fabric's node).
type flapLab struct {
	client, server *netlab.NS
	unnumbered     bool
	// conn is the client's connection; send makes the server write a line on it.
	conn net.Conn
	send func(line string)
}

// newFlapLab builds the lab; dial opens the client's connection, given the client's
// namespace's own dialer.
func newFlapLab(t *testing.T, unnumbered bool, dial func(ns func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error)) *flapLab {
	t.Helper()
	l := &flapLab{unnumbered: unnumbered}
	l.client, l.server = netlab.NewNS(t, "apic"), netlab.NewNS(t, "apis")
	netlab.Veth(t, l.client, "a0", l.server, "b0")
	netlab.Veth(t, l.client, "a1", l.server, "b1")
	if unnumbered {
		l.client.Addr("lo", clientLoopback+"/32")
		l.server.Run("ip", "route", "add", clientLoopback+"/32", "dev", "b0")
	} else {
		l.client.Addr("a0", "10.77.0.1/24")
	}
	l.server.Addr("b0", "10.77.0.2/24")
	l.server.Run("ip", "link", "set", "b1", "up")
	l.server.Addr("lo", serverAddr+"/32")
	l.route()
	// fully-random, as kube-proxy writes it: the connection's port on the wire is not its socket's, so once the
	// masquerade state is gone the server's segments reach no socket.
	l.client.Run("nft", `table ip nat {
	chain post {
		type nat hook postrouting priority srcnat;
		oifname "a0" masquerade fully-random
	}
}`)
	var ln net.Listener
	if err := l.server.Do(func() (err error) { ln, err = net.Listen("tcp", serverAddr+":0"); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	c, err := dial(l.client.DialContext)(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var sc net.Conn
	select {
	case sc = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the server accepted nothing")
	}
	t.Cleanup(func() { sc.Close() })
	l.conn = c
	l.send = func(line string) { _, _ = sc.Write([]byte(line + "\n")) } // after a reset it fails: the client sees that by reading
	return l
}

// serverAddr is where the server listens, reached through a0; clientLoopback is the
// client's address when a0 is unnumbered.
const (
	serverAddr     = "10.79.0.2"
	clientLoopback = "10.76.0.1"
)

// route sets the client's route to the server, which a0 going down takes away.
func (l *flapLab) route() {
	if l.unnumbered {
		l.client.Run("ip", "route", "replace", serverAddr+"/32", "via", "10.77.0.2", "dev", "a0", "onlink")
		return
	}
	l.client.Run("ip", "route", "replace", serverAddr+"/32", "via", "10.77.0.2", "dev", "a0")
}

// flap takes link dev of the client down for a moment, the server writing line
// meanwhile (none when empty), and brings it up; the route to the server comes back
// routeAfter later. It returns when the route was about to be set.
func (l *flapLab) flap(dev, line string, routeAfter time.Duration) time.Time {
	l.client.Run("ip", "link", "set", dev, "down")
	if line != "" {
		l.send(line)
	}
	time.Sleep(200 * time.Millisecond)
	l.client.Run("ip", "link", "set", dev, "up")
	time.Sleep(routeAfter)
	at := time.Now() // before: a try may succeed while the command that set the route exits
	l.route()
	return at
}

// read returns the next line the client reads within limit, or the error.
func read(c net.Conn, r *bufio.Reader, limit time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(limit))
	return r.ReadString('\n')
}

// The kernel fact LinkWatch guards against: a masqueraded connection whose link goes
// down and up loses its NAT state, and the client hears nothing more on it (not even of
// the reset the server's next segment drew) until it sends.
func TestAFlappedLinkSilencesAMasqueradedConnection(t *testing.T) {
	netlab.Require(t)
	for _, unnumbered := range []bool{false, true} {
		t.Run(fmt.Sprintf("unnumbered=%v", unnumbered), func(t *testing.T) { aFlappedLinkSilences(t, unnumbered) })
	}
}

func aFlappedLinkSilences(t *testing.T, unnumbered bool) {
	l := newFlapLab(t, unnumbered, func(ns func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
		return ns
	})
	r := bufio.NewReader(l.conn)
	l.send("before")
	if got, err := read(l.conn, r, 5*time.Second); got != "before\n" {
		t.Fatalf("before the flap: %q, %v", got, err)
	}
	l.flap("a0", "during", 0)
	l.send("after")
	if got, err := read(l.conn, r, 3*time.Second); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the flap the client read %q, %v; want nothing at all (if the kernel keeps the masquerade state now, LinkWatch guards against nothing here)", got, err)
	}
}

// LinkWatch replaces the connections when a link with an address was set down, once the
// server can be reached again; a link without an address going down, or a link losing
// its carrier (the NAT state stays), leaves them alone.
func TestLinkWatchClosesTheConnectionsOfAFlappedLink(t *testing.T) {
	netlab.Require(t)
	for _, unnumbered := range []bool{false, true} {
		t.Run(fmt.Sprintf("unnumbered=%v", unnumbered), func(t *testing.T) { linkWatchCloses(t, unnumbered) })
	}
}

func linkWatchCloses(t *testing.T, unnumbered bool) {
	var conns *Conns
	l := newFlapLab(t, unnumbered, func(ns func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
		cfg := &rest.Config{Dial: ns}
		conns = Track(cfg)
		return cfg.Dial
	})
	ctx, cancel := context.WithCancel(t.Context())
	reg := prometheus.NewRegistry()
	ran := make(chan struct{})
	made := make(chan error, 1)
	go func() { // the watch made and run on a thread of the client's namespace, as the speaker's on the node's
		defer close(ran)
		err := l.client.Do(func() error {
			w, err := NewLinkWatch(conns, nil, reg)
			made <- err
			if err == nil {
				w.Run(ctx)
			}
			return nil
		})
		if err != nil {
			made <- err
		}
	}()
	t.Cleanup(func() { cancel(); <-ran })
	if err := <-made; err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the watch has listed the links
	r := bufio.NewReader(l.conn)
	for _, step := range []string{"before", "after a1 flapped", "after a0 lost its carrier"} {
		switch step {
		case "after a1 flapped":
			l.flap("a1", "", 0)
		case "after a0 lost its carrier": // the far end down: a0 stays up, the NAT state stays
			l.server.Run("ip", "link", "set", "b0", "down")
			l.send("while a0 had no carrier")
			time.Sleep(200 * time.Millisecond)
			l.server.Run("ip", "link", "set", "b0", "up")
			if l.unnumbered { // the server's own route to the client went with its b0
				l.server.Run("ip", "route", "replace", clientLoopback+"/32", "dev", "b0")
			}
			if got, err := read(l.conn, r, 5*time.Second); got != "while a0 had no carrier\n" {
				t.Fatalf("%s: read %q, %v", step, got, err)
			}
		}
		time.Sleep(2 * time.Second) // several times what a replacement takes (logged below)
		l.send(step)
		if got, err := read(l.conn, r, 5*time.Second); got != step+"\n" {
			t.Fatalf("%s: read %q, %v", step, got, err)
		}
	}
	// The route comes back a second after the link: the connection is closed then, when a
	// new one can be made, not before.
	type result struct {
		line string
		err  error
		at   time.Time
	}
	done := make(chan result, 1)
	go func() {
		got, err := read(l.conn, r, 10*time.Second)
		done <- result{got, err, time.Now()}
	}()
	routed := l.flap("a0", "during", time.Second)
	res := <-done
	if !errors.Is(res.err, net.ErrClosed) {
		t.Fatalf("after a0 flapped: read %q, %v; want the connection closed", res.line, res.err)
	}
	if res.at.Before(routed) {
		t.Fatalf("closed %s before the route to the server was back: client-go would redial into the missing route and back off", routed.Sub(res.at).Round(time.Millisecond))
	}
	t.Logf("closed %s after the route to the server came back (a second after a0)", res.at.Sub(routed).Round(time.Millisecond))
	if got := replaced(t, reg, "link_down"); got != 1 {
		t.Errorf("herald_api_connections_replaced_total{why=\"link_down\"} = %v, want 1", got)
	}
	c, err := conns.DialContext(t.Context(), "tcp", l.conn.RemoteAddr().String())
	if err != nil {
		t.Fatalf("a new connection after the flap: %v", err)
	}
	c.Close()
}

// replaced returns herald_api_connections_replaced_total{why} as gathered from reg.
func replaced(t *testing.T, reg *prometheus.Registry, why string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			if f.GetName() == "herald_api_connections_replaced_total" && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == why {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
