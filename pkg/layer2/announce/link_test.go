package announce

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/layer2"
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
	var ignore []string
	if s := os.Getenv("HERALD_LAYER2_IGNORE"); s != "" {
		ignore = strings.Split(s, ",")
	}
	a := New(Options{Registerer: reg, Rescan: time.Second, Ignore: ignore})
	var set []layer2.Address
	for _, s := range strings.Split(owned, ",") {
		ip, ifs, named := strings.Cut(s, "@") // ip@if1+if2 names the interfaces, as a pool's interfaces: does
		o := layer2.Address{IP: netip.MustParseAddr(ip)}
		if named {
			o.Interfaces = strings.Split(ifs, "+")
		}
		set = append(set, o)
	}
	a.Set(set)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		for ctx.Err() == nil && len(a.Serving()) < len(set) {
			time.Sleep(10 * time.Millisecond)
		}
		for ip, ifs := range a.Serving() {
			fmt.Printf("serving %s on %s\n", ip, strings.Join(ifs, ","))
		}
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
	aMAC       string
	probe      *netlab.Prober
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
	e.aMAC = e.a.MAC("a0")
	e.probe = netlab.NewProber(t, e.b, "b0", netip.MustParseAddr("192.168.77.2"))
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
	scan := bufio.NewScanner(out)
	done := make(chan struct{})
	var lines []string
	go func() {
		defer close(done)
		for scan.Scan() {
			lines = append(lines, scan.Text())
		}
	}()
	stopped := false
	e.stopHelper = func() []string {
		if !stopped {
			stopped = true
			netlab.Terminate(cmd.Process, done, 10*time.Second)
			_ = cmd.Wait()
		}
		return lines
	}
	t.Cleanup(func() { e.stopHelper() })
}

func TestAnswersOnlyOwnedAddressesAcrossVeth(t *testing.T) {
	e := setupLink(t)
	vip4, vip6 := netip.MustParseAddr("192.168.77.100"), netip.MustParseAddr("fd77::100")
	e.startHelper(t, vip4.String(), vip6.String())

	// Taking the addresses over is announced: gratuitous ARP in both forms, and an
	// unsolicited override advertisement.
	garp := func(op arp.Operation) func(*arp.Packet) bool {
		return func(p *arp.Packet) bool {
			return p.Operation == op && p.SenderIP == vip4 && p.TargetIP == vip4 && p.SenderHardwareAddr.String() == e.aMAC
		}
	}
	if _, err := e.probe.ReadARP(3*time.Second, garp(arp.OperationRequest)); err != nil {
		t.Fatalf("no gratuitous ARP request: %v", err)
	}
	if _, err := e.probe.ReadARP(time.Second, garp(arp.OperationReply)); err != nil {
		t.Fatalf("no gratuitous ARP reply: %v", err)
	}
	na, err := e.probe.ReadNA(3*time.Second, vip6, false)
	if err != nil {
		t.Fatalf("no unsolicited Neighbor Advertisement: %v", err)
	}
	if !na.Override || na.Solicited || netlab.TargetLLA(na) != e.aMAC {
		t.Errorf("unsolicited advertisement %+v, target %s", na, netlab.TargetLLA(na))
	}

	// Asked, it answers for what it owns, with its own MAC...
	time.Sleep(300 * time.Millisecond) // let the burst end
	if err := e.probe.SendARP(vip4); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("192.168.77.2")
	reply, err := e.probe.ReadARP(2*time.Second, func(p *arp.Packet) bool {
		return p.Operation == arp.OperationReply && p.SenderIP == vip4 && p.TargetIP == client
	})
	if err != nil {
		t.Fatalf("no ARP reply for %s: %v", vip4, err)
	}
	if reply.SenderHardwareAddr.String() != e.aMAC || reply.TargetHardwareAddr.String() != e.probe.Ifi.HardwareAddr.String() {
		t.Errorf("ARP reply %+v", reply)
	}
	if err := e.probe.SendNS(vip6); err != nil {
		t.Fatal(err)
	}
	if na, err = e.probe.ReadNA(2*time.Second, vip6, true); err != nil {
		t.Fatalf("no Neighbor Advertisement for %s: %v", vip6, err)
	}
	if !na.Solicited || !na.Override || netlab.TargetLLA(na) != e.aMAC {
		t.Errorf("solicited advertisement %+v, target %s", na, netlab.TargetLLA(na))
	}

	// ...and stays silent for what it does not.
	if err := e.probe.SendARP(netip.MustParseAddr("192.168.77.101")); err != nil {
		t.Fatal(err)
	}
	if p, err := e.probe.ReadARP(500*time.Millisecond, func(p *arp.Packet) bool { return p.SenderIP == netip.MustParseAddr("192.168.77.101") }); err == nil {
		t.Errorf("answered for an address it does not own: %+v", p)
	}
	if err := e.probe.SendNS(netip.MustParseAddr("fd77::101")); err != nil {
		t.Fatal(err)
	}
	if na, err := e.probe.ReadNA(500*time.Millisecond, netip.MustParseAddr("fd77::101"), true); err == nil {
		t.Errorf("advertised an address it does not own: %+v", na)
	}

	// A malformed frame is dropped and counted.
	bad := make([]byte, 60)
	copy(bad, broadcast)
	copy(bad[6:], e.probe.Ifi.HardwareAddr)
	bad[12], bad[13] = 0x08, 0x06 // ARP, with an all-zero (invalid) payload
	if err := e.probe.WriteFrame(bad); err != nil {
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

// An address is answered on the bridge that carries its subnet, never on the bridge's
// enslaved ports.
func TestAnswersOnTheBridgeNotItsPorts(t *testing.T) {
	netlab.Require(t)
	a, b := netlab.NewNS(t, "l2a"), netlab.NewNS(t, "l2b")
	netlab.Veth(t, a, "a0", b, "b0")
	a.Bridge("br-a")
	a.Run("ip", "link", "set", "a0", "master", "br-a")
	a.Addr("br-a", "192.168.78.1/24")
	b.Addr("b0", "192.168.78.2/24")
	e := &linkEnv{a: a, b: b}
	probe := netlab.NewProber(t, b, "b0", netip.MustParseAddr("192.168.78.2"))
	// Both named, as a pool's interfaces: may: the port must still be left out.
	e.startHelper(t, "192.168.78.100@a0+br-a")
	// It answers through the bridge...
	var macs []string
	for deadline := time.Now().Add(5 * time.Second); len(macs) == 0 && time.Now().Before(deadline); {
		macs, _ = probe.AskARP(netip.MustParseAddr("192.168.78.100"), 300*time.Millisecond)
	}
	if len(macs) != 1 {
		t.Fatalf("answers for 192.168.78.100: %v, want exactly one", macs)
	}
	// ...and says it serves the address on br-a alone.
	out := strings.Join(e.stopHelper(), "\n")
	if !strings.Contains(out, "serving 192.168.78.100 on br-a\n") && !strings.HasSuffix(out, "serving 192.168.78.100 on br-a") {
		t.Errorf("helper output:\n%s", out)
	}
}

// TestIgnoredInterfaceNeverAnswers: an interface in Options.Ignore (the forwarder's
// herald0, which holds the addresses) is never answered on, though an owned address is in
// its subnet, while another interface of the same node answers.
func TestIgnoredInterfaceNeverAnswers(t *testing.T) {
	netlab.Require(t)
	a, b := netlab.NewNS(t, "l2a"), netlab.NewNS(t, "l2b")
	netlab.Veth(t, a, "a0", b, "b0")
	netlab.Veth(t, a, "a1", b, "b1")
	a.Addr("a0", "192.168.79.1/24")
	a.Addr("a1", "192.168.80.1/24")
	b.Addr("b0", "192.168.79.2/24")
	b.Addr("b1", "192.168.80.2/24")
	ignored := netlab.NewProber(t, b, "b0", netip.MustParseAddr("192.168.79.2"))
	served := netlab.NewProber(t, b, "b1", netip.MustParseAddr("192.168.80.2"))
	t.Setenv("HERALD_LAYER2_IGNORE", "a0")
	e := &linkEnv{a: a, b: b}
	e.startHelper(t, "192.168.79.100", "192.168.80.100")
	var macs []string
	for deadline := time.Now().Add(5 * time.Second); len(macs) == 0 && time.Now().Before(deadline); {
		macs, _ = served.AskARP(netip.MustParseAddr("192.168.80.100"), 300*time.Millisecond)
	}
	if len(macs) != 1 {
		t.Fatalf("answers for 192.168.80.100 on a1: %v, want exactly one", macs)
	}
	for range 3 {
		if macs, _ := ignored.AskARP(netip.MustParseAddr("192.168.79.100"), 300*time.Millisecond); len(macs) != 0 {
			t.Fatalf("answers for 192.168.79.100 on the ignored a0: %v, want none", macs)
		}
	}
}
