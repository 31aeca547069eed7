package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Beyond the mesh, with real speaker processes: five speakers that each watch only one
// neighbour on each side of the ring (--liveness-mesh=1, --liveness-monitors=1), so two
// of the four survivors learn of a crash only from a neighbour's report through
// memberlist, and check it themselves. Every survivor knows the crash by a refused
// connection well before memberlist's own detection (about a second), and every one
// knows it back after a restart.
func TestRingReportsCrashThroughMemberlist(t *testing.T) {
	c := start(t, Options{Nodes: 5, SpeakerFlags: []string{"--liveness-mesh=1", "--liveness-monitors=1"}})
	victim := c.Nodes[2]
	lines := func(n *Node, what string) int {
		log, _ := os.ReadFile(filepath.Join(c.LogDir(), n.Name+"-speaker.log"))
		count := 0
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, what) && strings.Contains(l, "member="+victim.Name) {
				count++
			}
		}
		return count
	}
	// Each survivor's ring connections settle: two per speaker.
	time.Sleep(2 * time.Second)
	before := map[string]int{}
	for _, n := range c.Nodes {
		before[n.Name] = lines(n, "how=connection_closed")
	}
	start := time.Now()
	c.StopSpeaker(victim, syscall.SIGKILL)
	// survivors waits until every survivor has logged one more line saying what.
	survivors := func(what string, before map[string]int, limit time.Duration, fail string) {
		t.Helper()
		for _, n := range c.Nodes {
			for n != victim && lines(n, what) == before[n.Name] {
				if time.Since(start) > limit {
					t.Fatalf("%s %s", n.Name, fail)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	survivors("how=connection_closed", before, 5*time.Second, "did not find the crash by itself (a refused connection)")
	t.Logf("every survivor knew the crash within %s", time.Since(start).Round(time.Millisecond))
	backBefore := map[string]int{}
	for _, n := range c.Nodes {
		backBefore[n.Name] = lines(n, "speaker back")
	}
	c.StartSpeaker(victim)
	start = time.Now()
	survivors("speaker back", backBefore, 20*time.Second, "does not know the restarted speaker is back")
}
