package layer2

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv6"

	"github.com/heraldlb/herald/e2e/netlab"
)

// The announcer of the real-link tests runs in a helper process started inside a
// namespace: this test binary again, with HERALD_LAYER2_HELPER naming the owned addresses.
func TestMain(m *testing.M) {
	if owned := os.Getenv("HERALD_LAYER2_HELPER"); owned != "" {
		os.Exit(helper(owned))
	}
	os.Exit(m.Run())
}

func helper(owned string) int {
	reg := prometheus.NewRegistry()
	a := New(Options{Registerer: reg, Rescan: time.Second})
	var set []Owned
	for _, s := range strings.Split(owned, ",") {
		set = append(set, Owned{IP: netip.MustParseAddr(s)})
	}
	a.SetOwned(set)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		for ctx.Err() == nil && len(a.Serving()) < len(set) {
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Println("serving")
	}()
	if err := a.Run(ctx); err != nil {
		fmt.Println("error", err)
		return 1
	}
	fams, _ := reg.Gather()
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			fmt.Printf("%s{%s} %g\n", f.GetName(), strings.Join(labels, ","), v)
		}
	}
	return 0
}

type linkEnv struct {
	a, b       *netlab.NS
	aMAC       net.HardwareAddr
	bIfi       *net.Interface
	arp        *packet.Conn
	ndp        *ndp.Conn
	helperOut  *bufio.Scanner
	stopHelper func() []string
}

func setupLink(t *testing.T) *linkEnv {
	netlab.Require(t)
	e := &linkEnv{a: netlab.NewNS(t, "l2a"), b: netlab.NewNS(t, "l2b")}
	netlab.Veth(t, e.a, "a0", e.b, "b0")
	e.a.Addr("a0", "192.168.77.1/24")
	e.a.Addr("a0", "fd77::1/64")
	e.b.Addr("b0", "192.168.77.2/24")
	e.b.Addr("b0", "fd77::2/64")
	mac := e.a.Run("cat", "/sys/class/net/a0/address")
	e.aMAC, _ = net.ParseMAC(strings.TrimSpace(mac))
	err := e.b.Do(func() error {
		var err error
		if e.bIfi, err = net.InterfaceByName("b0"); err != nil {
			return err
		}
		if e.arp, err = packet.Listen(e.bIfi, packet.Raw, 0x0806, nil); err != nil {
			return err
		}
		// The link-local address appears once the link is up.
		for range 50 {
			if e.ndp, _, err = ndp.Listen(e.bIfi, ndp.LinkLocal); err == nil {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		return err
	})
	if err != nil {
		t.Fatalf("client sockets: %v", err)
	}
	t.Cleanup(func() { e.arp.Close(); e.ndp.Close() })
	return e
}

func (e *linkEnv) startHelper(t *testing.T, owned ...string) {
	t.Helper()
	cmd := e.a.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HERALD_LAYER2_HELPER="+strings.Join(owned, ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.helperOut = bufio.NewScanner(out)
	done := make(chan struct{})
	var lines []string
	go func() {
		defer close(done)
		for e.helperOut.Scan() {
			lines = append(lines, e.helperOut.Text())
		}
	}()
	stopped := false
	e.stopHelper = func() []string {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			_ = cmd.Wait()
		}
		return lines
	}
	t.Cleanup(func() { e.stopHelper() })
}

// readARP returns the first ARP packet read within limit that match accepts.
func (e *linkEnv) readARP(limit time.Duration, match func(*arp.Packet) bool) (*arp.Packet, error) {
	deadline := time.Now().Add(limit)
	buf := make([]byte, 1514)
	for time.Now().Before(deadline) {
		_ = e.arp.SetReadDeadline(deadline)
		n, _, err := e.arp.ReadFrom(buf)
		if err != nil {
			return nil, err
		}
		var f ethernet.Frame
		var p arp.Packet
		if f.UnmarshalBinary(buf[:n]) != nil || p.UnmarshalBinary(f.Payload) != nil {
			continue
		}
		if match(&p) {
			return &p, nil
		}
	}
	return nil, errors.New("timed out")
}

func (e *linkEnv) askARP(t *testing.T, ip netip.Addr) {
	t.Helper()
	p, err := arp.NewPacket(arp.OperationRequest, e.bIfi.HardwareAddr, netip.MustParseAddr("192.168.77.2"), net.HardwareAddr{0, 0, 0, 0, 0, 0}, ip)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := marshalFrame(broadcast, e.bIfi.HardwareAddr, p)
	if _, err := e.arp.WriteTo(b, &packet.Addr{HardwareAddr: broadcast}); err != nil {
		t.Fatal(err)
	}
}

func (e *linkEnv) readNA(limit time.Duration, target netip.Addr, solicited bool) (*ndp.NeighborAdvertisement, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		_ = e.ndp.SetReadDeadline(deadline)
		m, _, _, err := e.ndp.ReadFrom()
		if err != nil {
			return nil, err
		}
		if na, ok := m.(*ndp.NeighborAdvertisement); ok && na.TargetAddress == target && na.Solicited == solicited {
			return na, nil
		}
	}
	return nil, errors.New("timed out")
}

func (e *linkEnv) askNDP(t *testing.T, ip netip.Addr) {
	t.Helper()
	group, _ := ndp.SolicitedNodeMulticast(ip)
	ns := &ndp.NeighborSolicitation{TargetAddress: ip, Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: e.bIfi.HardwareAddr}}}
	if err := e.ndp.WriteTo(ns, nil, group); err != nil {
		t.Fatal(err)
	}
}

func targetLLA(na *ndp.NeighborAdvertisement) string {
	for _, o := range na.Options {
		if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target {
			return l.Addr.String()
		}
	}
	return ""
}

func TestAnswersOnlyOwnedAddressesAcrossVeth(t *testing.T) {
	e := setupLink(t)
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeNeighborAdvertisement)
	_ = e.ndp.SetICMPFilter(&f)
	vip4, vip6 := netip.MustParseAddr("192.168.77.100"), netip.MustParseAddr("fd77::100")
	e.startHelper(t, vip4.String(), vip6.String())

	// Taking the addresses over is announced: gratuitous ARP in both forms, and an
	// unsolicited override advertisement.
	garp := func(op arp.Operation) func(*arp.Packet) bool {
		return func(p *arp.Packet) bool {
			return p.Operation == op && p.SenderIP == vip4 && p.TargetIP == vip4 && p.SenderHardwareAddr.String() == e.aMAC.String()
		}
	}
	if _, err := e.readARP(3*time.Second, garp(arp.OperationRequest)); err != nil {
		t.Fatalf("no gratuitous ARP request: %v", err)
	}
	if _, err := e.readARP(time.Second, garp(arp.OperationReply)); err != nil {
		t.Fatalf("no gratuitous ARP reply: %v", err)
	}
	na, err := e.readNA(3*time.Second, vip6, false)
	if err != nil {
		t.Fatalf("no unsolicited Neighbor Advertisement: %v", err)
	}
	if !na.Override || na.Solicited || targetLLA(na) != e.aMAC.String() {
		t.Errorf("unsolicited advertisement %+v, target %s", na, targetLLA(na))
	}

	// Asked, it answers for what it owns, with its own MAC...
	time.Sleep(300 * time.Millisecond) // let the burst end
	e.askARP(t, vip4)
	client := netip.MustParseAddr("192.168.77.2")
	reply, err := e.readARP(2*time.Second, func(p *arp.Packet) bool {
		return p.Operation == arp.OperationReply && p.SenderIP == vip4 && p.TargetIP == client
	})
	if err != nil {
		t.Fatalf("no ARP reply for %s: %v", vip4, err)
	}
	if reply.SenderHardwareAddr.String() != e.aMAC.String() || reply.TargetHardwareAddr.String() != e.bIfi.HardwareAddr.String() {
		t.Errorf("ARP reply %+v", reply)
	}
	e.askNDP(t, vip6)
	if na, err = e.readNA(2*time.Second, vip6, true); err != nil {
		t.Fatalf("no Neighbor Advertisement for %s: %v", vip6, err)
	}
	if !na.Solicited || !na.Override || targetLLA(na) != e.aMAC.String() {
		t.Errorf("solicited advertisement %+v, target %s", na, targetLLA(na))
	}

	// ...and stays silent for what it does not.
	e.askARP(t, netip.MustParseAddr("192.168.77.101"))
	if p, err := e.readARP(500*time.Millisecond, func(p *arp.Packet) bool { return p.SenderIP == netip.MustParseAddr("192.168.77.101") }); err == nil {
		t.Errorf("answered for an address it does not own: %+v", p)
	}
	e.askNDP(t, netip.MustParseAddr("fd77::101"))
	if na, err := e.readNA(500*time.Millisecond, netip.MustParseAddr("fd77::101"), true); err == nil {
		t.Errorf("advertised an address it does not own: %+v", na)
	}

	// A malformed frame is dropped and counted.
	bad := make([]byte, 60)
	copy(bad, broadcast)
	copy(bad[6:], e.bIfi.HardwareAddr)
	bad[12], bad[13] = 0x08, 0x06 // ARP, with an all-zero (invalid) payload
	if _, err := e.arp.WriteTo(bad, &packet.Addr{HardwareAddr: broadcast}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	metrics := strings.Join(e.stopHelper(), "\n")
	for _, want := range []string{
		`herald_layer2_dropped_total{family=IPv4,reason=malformed} 1`,
		`herald_layer2_answered_total{family=IPv4} 1`,
		`herald_layer2_answered_total{family=IPv6} 1`,
		`herald_layer2_gratuitous_sent_total{family=IPv4} 6`,
		`herald_layer2_gratuitous_sent_total{family=IPv6} 3`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("helper metrics lack %q:\n%s", want, metrics)
		}
	}
}
