package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const md5Pool = `
forwarding: none
address-pools:
- name: routed
  protocol: bgp
  addresses: [198.51.100.0/24]
`

// peerConfig is the configuration with one peer, the router, written as fields.
func peerConfig(fields string) string {
	return "peers:\n- {peer-address: 192.168.10.1, " + fields + "}\n" + md5Pool
}

// waitSessions waits until every node's session on the router is in state want (or, for
// want "down", in any state but Established).
func waitSessions(t *testing.T, c *Cluster, want string, limit time.Duration) {
	t.Helper()
	var states map[string]string
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		states, _ = c.Router.Sessions()
		ok := len(states) == len(c.Nodes)
		for _, s := range states {
			if (want == "down") == (s == "Established") {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	t.Fatalf("router sessions %v after %s, want all %s", states, limit, want)
}

func TestBGPAuthAndRefusal(t *testing.T) {
	c := start(t, Options{Config: peerConfig("peer-asn: 64500, my-asn: 64501, password: s3cret"), Router: func(nodes []*Node) string {
		return FRRConfig(nodes, "neighbor NODES password s3cret")
	}})
	ips := c.CreateService("web", nil)
	prefix := ips[0].String() + "/32"
	// The right TCP MD5 password: sessions up, routes in.
	waitSessions(t, c, "Established", 30*time.Second)
	waitHops(t, c.Router, prefix, []string{"192.168.10.11", "192.168.10.12", "192.168.10.13"}, 30*time.Second)

	// A wrong password: the router's kernel drops every segment; no session, no route.
	c.SetConfig(peerConfig("peer-asn: 64500, my-asn: 64501, password: wrong"))
	waitSessions(t, c, "down", 20*time.Second)
	waitHops(t, c.Router, prefix, nil, 10*time.Second)
	time.Sleep(3 * time.Second)
	if states, _ := c.Router.Sessions(); strings.Contains(strings.Join(mapValues(states), ","), "Established") {
		t.Fatalf("a session came up with the wrong password: %v", states)
	}

	// The right password but the wrong AS of our own: the router refuses the OPEN, and
	// the speaker says which peer refused and why.
	c.SetConfig(peerConfig("peer-asn: 64500, my-asn: 64777, password: s3cret"))
	var log string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b, _ := os.ReadFile(filepath.Join(c.LogDir(), "node1-speaker.log"))
		log = string(b)
		if strings.Contains(log, "refused by BGP peer") {
			break
		}
	}
	if !strings.Contains(log, "refused by BGP peer") || !strings.Contains(log, "peer=192.168.10.1") || !strings.Contains(log, "my-asn 64777") {
		t.Errorf("node1's log does not say that 192.168.10.1 refused it for its AS:\n%s", lastLines(log, "BGP", 8))
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func lastLines(log, containing string, n int) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, containing) {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}
