package e2e

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldlb/herald/hack/netlab"
)

// partitionHeal cuts the owner of ip off the LAN for cut, waits for another node to
// answer for ip, then heals the link and returns for how long after the heal more than
// one node answered ARP for ip (asked every few milliseconds), and who answers then.
func (c *Cluster) partitionHeal(t testing.TB, ip netip.Addr, cut time.Duration) (double time.Duration, cutOff, owner string) {
	t.Helper()
	old := c.owner(t, ip, 10*time.Second)
	cutOff = old.Name
	old.NS.Run("ip", "link", "set", "eth0", "down")
	healed := false
	defer func() {
		if !healed {
			old.NS.Run("ip", "link", "set", "eth0", "up")
		}
	}()
	start := time.Now()
	// Another node takes the address over while the owner is cut off.
	for {
		if got := c.Owners(ip, 100*time.Millisecond); len(got) == 1 && got[0] != old.Name {
			break
		}
		if time.Since(start) > cut {
			t.Fatalf("no other node answers for %s within %s of cutting %s off", ip, cut, old.Name)
		}
	}
	time.Sleep(cut - time.Since(start))
	old.NS.Run("ip", "link", "set", "eth0", "up")
	healed = true
	heal := time.Now()
	// Asked every window: the last time two nodes answered, until one alone has answered
	// for two seconds.
	const window = 10 * time.Millisecond
	var lastDouble, single, heardOld time.Time
	for time.Since(heal) < 20*time.Second {
		asked := time.Now()
		got := c.Owners(ip, window)
		if slices.Contains(got, old.Name) && heardOld.IsZero() {
			heardOld = asked
		}
		switch {
		case len(got) > 1:
			lastDouble, single = asked.Add(window), time.Time{}
		case len(got) == 1:
			if single.IsZero() {
				single, owner = asked, got[0]
			} else if got[0] != owner {
				single, owner = asked, got[0]
			}
			if time.Since(single) > 2*time.Second {
				if heardOld.IsZero() {
					// The cut-off owner never answered again: not the case measured.
					t.Logf("%s did not answer for %s after the heal", old.Name, ip)
				}
				if lastDouble.IsZero() {
					return 0, old.Name, owner
				}
				return lastDouble.Sub(heal), old.Name, owner
			}
		default:
			single = time.Time{}
		}
	}
	t.Fatalf("%s: not one single owner within 20s after the heal (logs in %s)", ip, c.LogDir())
	return 0, "", ""
}

// BenchmarkPartitionHeal measures how long two nodes answer ARP for an address after the
// owner's link comes back from an 8 s cut (HERALD_PARTITION_SECONDS): the cut-off owner
// kept the address (it heard from no one, so it accused no one) while another node took
// it over; they must find each other again. HERALD_PARTITION_RUNS cuts per iteration
// (default 5); HERALD_E2E_SPEAKER measures another speaker binary.
func BenchmarkPartitionHeal(b *testing.B) {
	runs, _ := strconv.Atoi(envOr("HERALD_PARTITION_RUNS", "5"))
	secs, _ := strconv.Atoi(envOr("HERALD_PARTITION_SECONDS", "8"))
	netlab.Require(b)
	c := Start(b, benchSpeaker(), Options{})
	ips := c.CreateService("web", nil)
	ip := ips[0]
	for b.Loop() {
		var double []time.Duration
		for i := range runs {
			took, cutOff, owner := c.partitionHeal(b, ip, time.Duration(secs)*time.Second)
			double = append(double, took)
			b.Logf("run %d: %s cut off; two nodes answered for %s for %s after the heal; then %s alone", i, cutOff, ip, took.Round(time.Millisecond), owner)
			c.WaitMembers(len(c.Nodes), 30*time.Second)
		}
		slices.Sort(double)
		reportMicros(b, "double-owner", double)
	}
}

// Without a gossip key the failure detector does not run (it would be unauthenticated):
// the speaker says so in its metrics, listens on no liveness port, and memberlist alone
// detects deaths.
func TestLivenessOffWithoutKey(t *testing.T) {
	c := start(t, Options{SpeakerFlags: []string{"--memberlist-secret="}})
	for _, n := range c.Nodes {
		m, err := c.Metrics(n)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m, "herald_liveness_enabled 0\n") {
			t.Errorf("%s: herald_liveness_enabled is not 0", n.Name)
		}
		if _, err := n.NS.DialContext(context.Background(), "tcp", net.JoinHostPort(n.IP4, "7947")); err == nil {
			t.Errorf("%s listens on the liveness port without a key", n.Name)
		}
	}
}
