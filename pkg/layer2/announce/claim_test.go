package announce

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Forged claims from ever-changing hardware addresses (anyone on the segment can send
// them) are counted each, but logged at most once per claimLogEvery per address: a flood
// does not become a flood of log lines.
func TestClaimFloodIsNotALogFlood(t *testing.T) {
	var out bytes.Buffer
	a := New(Options{Logger: slog.New(slog.NewTextHandler(&out, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	ip := netip.MustParseAddr("192.0.2.10")
	l := &link{ifi: net.Interface{Name: "eth0", HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		serves: map[netip.Addr]bool{ip: true}, conflicts: map[netip.Addr]*dispute{}, done: make(chan struct{})}
	a.mu.Lock()
	a.ctx = ctx
	a.links[1] = l
	a.mu.Unlock()
	t.Cleanup(func() {
		cancel()
		a.wg.Wait()
	})
	start := time.Now()
	for i := range 1000 {
		a.claimed(l, claim{ip: ip, mac: net.HardwareAddr{2, 0xff, 0, 0, byte(i >> 8), byte(i)}})
	}
	lines := strings.Count(out.String(), "another node claims")
	if most := 1 + int(time.Since(start)/claimLogEvery); lines > most {
		t.Errorf("%d log lines for 1000 forged claims, want at most %d", lines, most)
	}
	if lines == 0 {
		t.Error("the conflict was not logged at all")
	}
}
