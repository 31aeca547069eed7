package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldlb/herald/hack/netlab"
)

// Router addresses on the lab network.
const (
	RouterIP4 = "192.168.10.1"
	RouterIP6 = "fd10::1"
	RouterASN = 64500
	NodeASN   = 64501
)

// Router is an FRR router (zebra and bgpd, and bfdd when asked, from Debian's frr
// package) in a namespace of its own on the lab's bridge.
type Router struct {
	NS     *netlab.NS
	dir    string
	c      *Cluster
	common []string
	bfdd   *exec.Cmd
}

// BFDDConfig is a bfdd configuration with one profile, name, of the given intervals (ms)
// and multiplier; bgpd's neighbours use it with `neighbor NODES bfd profile NAME`.
func BFDDConfig(name string, rx, tx, mult int) string {
	return fmt.Sprintf("bfd\n profile %s\n  receive-interval %d\n  transmit-interval %d\n  detect-multiplier %d\n !\n!\n", name, rx, tx, mult)
}

// FRRConfig is a bgpd configuration that peers with every node over IPv4 and IPv6, eBGP,
// with ECMP across them. extra lines go inside `router bgp`, before the address families.
func FRRConfig(nodes []*Node, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults traditional\nhostname router\n!\nrouter bgp %d\n", RouterASN)
	fmt.Fprintf(&b, " bgp router-id %s\n no bgp ebgp-requires-policy\n bgp bestpath as-path multipath-relax\n", RouterIP4)
	b.WriteString(" neighbor NODES peer-group\n neighbor NODES remote-as " + strconv.Itoa(NodeASN) + "\n neighbor NODES timers connect 1\n")
	b.WriteString(" neighbor NODES6 peer-group\n neighbor NODES6 remote-as " + strconv.Itoa(NodeASN) + "\n neighbor NODES6 timers connect 1\n")
	for _, n := range nodes {
		fmt.Fprintf(&b, " neighbor %s peer-group NODES\n neighbor %s peer-group NODES6\n", n.IP4, n.IP6)
	}
	for _, l := range extra {
		b.WriteString(" " + l + "\n")
	}
	b.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n  no neighbor NODES6 activate\n exit-address-family\n")
	b.WriteString(" address-family ipv6 unicast\n  neighbor NODES6 activate\n  maximum-paths 8\n exit-address-family\n!\n")
	return b.String()
}

// StartRouter brings up FRR with bgpd.conf text.
func (c *Cluster) StartRouter(bgpdConf string) *Router {
	c.t.Helper()
	ns := c.newNS("router")
	netlab.Plug(c.t, c.Switch, "br0", "p-router", ns, "eth0")
	ns.Addr("eth0", RouterIP4+"/24")
	ns.Addr("eth0", RouterIP6+"/64")
	// A router forwards, by the routes BGP gives it (set before any packet arrives, so no
	// route decision of a non-forwarding host is cached).
	ns.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	r := &Router{NS: ns, dir: filepath.Join(c.logDir, "frr"), c: c}
	// FRR drops to the frr user, who must reach its files under the log directory.
	if err := os.Chmod(c.logDir, 0o755); err != nil {
		c.t.Fatalf("%v", err)
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		c.t.Fatalf("%v", err)
	}
	// Routes carry their next hops, not a kernel nexthop object: WatchRoutes reads them
	// from the route messages.
	files := map[string]string{"zebra.conf": "hostname router\nno zebra nexthop kernel enable\n", "bgpd.conf": bgpdConf}
	if c.opts.RouterBFD != "" {
		files["bfdd.conf"] = c.opts.RouterBFD
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(text), 0o644); err != nil {
			c.t.Fatalf("%v", err)
		}
	}
	// The daemons drop to the frr user: it owns their directory.
	if u, err := user.Lookup("frr"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		_ = filepath.Walk(r.dir, func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, uid, gid) })
	}
	common := []string{"-u", "frr", "-g", "frr", "--vty_socket", r.dir, "-z", filepath.Join(r.dir, "zserv.api")}
	r.common = common
	c.daemon(ns, "frr-zebra", append(append([]string{"/usr/lib/frr/zebra"}, common...),
		"-i", filepath.Join(r.dir, "zebra.pid"), "-f", filepath.Join(r.dir, "zebra.conf"))...)
	c.waitFile(filepath.Join(r.dir, "zserv.api"))
	if c.opts.RouterBFD != "" {
		r.StartBFDD()
	}
	c.daemon(ns, "frr-bgpd", append(append([]string{"/usr/lib/frr/bgpd"}, common...),
		"-i", filepath.Join(r.dir, "bgpd.pid"), "-f", filepath.Join(r.dir, "bgpd.conf"))...)
	c.waitFile(filepath.Join(r.dir, "bgpd.vty"))
	return r
}

// StartBFDD starts FRR's bfdd (with Options.RouterBFD as its configuration).
func (r *Router) StartBFDD() {
	r.c.t.Helper()
	_ = os.Remove(filepath.Join(r.dir, "bfdd.vty"))
	r.bfdd = r.c.daemon(r.NS, "frr-bfdd", append(append([]string{"/usr/lib/frr/bfdd"}, r.common...),
		"-i", filepath.Join(r.dir, "bfdd.pid"), "-f", filepath.Join(r.dir, "bfdd.conf"))...)
	r.c.waitFile(filepath.Join(r.dir, "bfdd.vty"))
}

// KillBFDD kills bfdd at once: its sessions fall silent, with no word to the peers.
func (r *Router) KillBFDD() {
	if r.bfdd != nil {
		_ = r.bfdd.Process.Kill()
		_ = r.bfdd.Wait()
		r.bfdd = nil
	}
}

// BFDPeers returns bfdd's sessions: the state of each by peer address.
func (r *Router) BFDPeers() (map[string]string, error) {
	out, err := r.VTY("show bfd peers json")
	if err != nil {
		return nil, fmt.Errorf("vtysh: %v: %s", err, out)
	}
	var v []struct {
		Peer   string `json:"peer"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("vtysh output %q: %w", out, err)
	}
	states := map[string]string{}
	for _, p := range v {
		states[p.Peer] = p.Status
	}
	return states, nil
}

// VTY runs a vtysh command on the router and returns its output.
func (r *Router) VTY(cmd string) (string, error) {
	out, err := exec.Command("vtysh", "--vty_socket", r.dir, "-c", cmd).CombinedOutput()
	return string(out), err
}

// Paths returns, for a prefix in the router's BGP table, the next hop of each path and
// the path's attributes as FRR reports them.
func (r *Router) Paths(prefix string) ([]FRRPath, error) {
	afi := "ipv4"
	if strings.Contains(prefix, ":") {
		afi = "ipv6"
	}
	out, err := r.VTY(fmt.Sprintf("show bgp %s unicast %s json", afi, prefix))
	if err != nil {
		return nil, fmt.Errorf("vtysh: %v: %s", err, out)
	}
	var v struct {
		Paths []FRRPath `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("vtysh output %q: %w", out, err)
	}
	return v.Paths, nil
}

// FRRPath is one path of FRR's `show bgp … json`.
type FRRPath struct {
	Nexthops []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
	Community struct {
		String string `json:"string"`
	} `json:"community"`
	LargeCommunity struct {
		String string `json:"string"`
	} `json:"largeCommunity"`
	LocPrf    uint32 `json:"locPrf"`
	Multipath bool   `json:"multipath"`
	Bestpath  *struct {
		Overall bool `json:"overall"`
	} `json:"bestpath"`
	Peer struct {
		PeerID string `json:"peerId"`
	} `json:"peer"`
}

// Sessions returns the state of the router's IPv4 unicast sessions by neighbour address.
func (r *Router) Sessions() (map[string]string, error) {
	out, err := r.VTY("show bgp ipv4 unicast summary json")
	if err != nil {
		return nil, fmt.Errorf("vtysh: %v: %s", err, out)
	}
	var v struct {
		Peers map[string]struct {
			State string `json:"state"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, err
	}
	states := map[string]string{}
	for addr, p := range v.Peers {
		states[addr] = p.State
	}
	return states, nil
}

// BIRD is a BIRD 2 router (Debian's bird2) in a namespace of its own on the lab's bridge.
type BIRD struct {
	NS   *netlab.NS
	sock string
}

// StartBIRD brings up BIRD peering with every node over IPv4 (eBGP, AS RouterASN).
func (c *Cluster) StartBIRD() *BIRD { return c.startBIRD(false) }

// StartBIRDRouter is StartBIRD as a router: it installs the routes it learns in its
// kernel, merging the nodes' paths into one multipath route (ECMP), and forwards. BIRD
// exports a change to the kernel as it happens, with no hold time.
func (c *Cluster) StartBIRDRouter() *BIRD { return c.startBIRD(true) }

func (c *Cluster) startBIRD(kernel bool) *BIRD {
	c.t.Helper()
	ns := c.newNS("bird")
	netlab.Plug(c.t, c.Switch, "br0", "p-bird", ns, "eth0")
	ns.Addr("eth0", "192.168.10.3/24")
	dir := filepath.Join(c.logDir, "bird")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatalf("%v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "router id 192.168.10.3;\nprotocol device {}\n")
	if kernel {
		ns.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
		b.WriteString("protocol kernel { ipv4 { export all; }; merge paths on; }\n")
	}
	fmt.Fprintf(&b, "template bgp nodes {\n  local 192.168.10.3 as %d;\n  ipv4 { import all; export none; };\n  connect retry time 1;\n}\n", RouterASN)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "protocol bgp %s from nodes { neighbor %s as %d; }\n", n.Name, n.IP4, NodeASN)
	}
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		c.t.Fatalf("%v", err)
	}
	r := &BIRD{NS: ns, sock: filepath.Join(dir, "bird.ctl")}
	c.daemon(ns, "bird", "bird", "-f", "-c", conf, "-s", r.sock, "-P", filepath.Join(dir, "bird.pid"))
	c.waitFile(r.sock)
	return r
}

// Show runs a birdc command and returns its output.
func (r *BIRD) Show(cmd string) (string, error) {
	out, err := exec.Command("birdc", "-s", r.sock, cmd).CombinedOutput()
	return string(out), err
}

// NextHops returns the sorted next hops of BIRD's routes for prefix.
func (r *BIRD) NextHops(prefix string) []string {
	out, err := r.Show("show route " + prefix)
	if err != nil {
		return nil
	}
	var hops []string
	for _, f := range strings.Split(out, "\n") {
		fields := strings.Fields(f)
		for i := 0; i+1 < len(fields); i++ {
			if fields[i] == "via" {
				hops = append(hops, fields[i+1])
			}
		}
	}
	slices.Sort(hops)
	return hops
}

// RoutesReceived sums the prefixes received from every peer in `show bgp … summary json`.
func RoutesReceived(summaryJSON string) int {
	var v struct {
		Peers map[string]struct {
			PfxRcd int `json:"pfxRcd"`
		} `json:"peers"`
	}
	if json.Unmarshal([]byte(summaryJSON), &v) != nil {
		return 0
	}
	n := 0
	for _, p := range v.Peers {
		n += p.PfxRcd
	}
	return n
}

// FRRLogUpdates goes before a bgpd configuration to have bgpd log every UPDATE it
// receives, with microsecond timestamps (Router.Received reads them).
const FRRLogUpdates = "log stdout debugging\nlog timestamp precision 6\ndebug bgp updates in\n"

// Received returns when bgpd, configured with FRRLogUpdates, first received from
// neighbour from, after after, the prefix (withdrawn: its withdrawal); false if it has not.
func (r *Router) Received(prefix, from string, after time.Time, withdrawn bool) (time.Time, bool) {
	data, err := os.ReadFile(filepath.Join(r.c.logDir, "frr-bgpd.log"))
	if err != nil {
		return time.Time{}, false
	}
	want := "rcvd " + prefix + " IPv4 unicast"
	if withdrawn {
		want = "rcvd UPDATE about " + prefix + " IPv4 unicast -- withdrawn"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		// "… BGP: [ID] 192.168.10.11(hostname) rcvd …", the hostname FRR learnt or none.
		if !strings.HasSuffix(line, want) || len(line) < 26 || !(strings.Contains(line, " "+from+"(") || strings.Contains(line, " "+from+" rcvd")) {
			continue
		}
		at, err := time.ParseInLocation("2006/01/02 15:04:05.000000", line[:26], time.Local)
		if err == nil && at.After(after) {
			return at, true
		}
	}
	return time.Time{}, false
}
