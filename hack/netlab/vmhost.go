package netlab

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireVM skips a test that needs ip_vs outside the VM that hack/vm boots, saying how
// to run it.
func RequireVM(t testing.TB) {
	t.Helper()
	if os.Getenv("HERALD_IN_VM") == "" {
		t.Skip("needs ip_vs: runs inside the VM (go run ./hack/vm -control-plane -run InVM PACKAGE, part of make test)")
	}
}

// LinkedHost makes namespace hN linked to the current (root) namespace by a veth, with
// address 10.N.0.2/24 and its default route through the root's 10.N.0.1. The root
// namespace is the node under test, so this is for tests inside the VM only
// (HERALD_IN_VM set): it refuses to touch any other machine's own namespace.
func LinkedHost(t testing.TB, n int) netns.NsHandle {
	t.Helper()
	if os.Getenv("HERALD_IN_VM") == "" {
		t.Fatal("LinkedHost changes the root namespace: only inside the VM")
	}
	name := fmt.Sprintf("h%d", n)
	var ns netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, _ := netns.Get()
		h, err := netns.NewNamed(name) // switches this thread into it
		if err == nil {
			ns = h
			err = netns.Set(orig)
		}
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	root, peer := fmt.Sprintf("v%d", n), fmt.Sprintf("v%dp", n)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: root}, PeerName: peer}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(root); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	l, _ := netlink.LinkByName(root)
	_ = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, byte(n), 0, 1), Mask: net.CIDRMask(24, 32)}})
	_ = netlink.LinkSetUp(l)
	p, _ := netlink.LinkByName(peer)
	if err := netlink.LinkSetNsFd(p, int(ns)); err != nil {
		t.Fatal(err)
	}
	err := InNamespace(ns, func() error {
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		p, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(p, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, byte(n), 0, 2), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(p); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.IPv4(10, byte(n), 0, 1)})
	})
	if err != nil {
		t.Fatalf("configure %s: %v", name, err)
	}
	return ns
}

// ServeName answers every TCP connection to addr in ns with a line "name source", the
// source being the address it saw the connection come from; until the test ends.
func ServeName(t testing.TB, ns netns.NsHandle, addr, name string) {
	t.Helper()
	var l net.Listener
	if err := InNamespace(ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			src, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, name, src)
			c.Close()
		}
	}()
}

// Ask connects from ns to addr and returns the name a ServeName server answered with and
// the source address it saw; limit bounds the connection and the read.
func Ask(ns netns.NsHandle, addr string, limit time.Duration) (who, saw string, err error) {
	var c net.Conn
	if err := InNamespace(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, limit)
		return err
	}); err != nil {
		return "", "", fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(limit))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("read from %s: %w", addr, err)
	}
	who, saw, _ = strings.Cut(strings.TrimSpace(line), " ")
	return who, saw, nil
}
