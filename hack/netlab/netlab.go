// Package netlab builds test networks out of Linux network namespaces: hosts are
// namespaces, links are veth pairs and bridges created inside them, so nothing is ever
// added to the host's own namespace. Everything a test creates is removed in t.Cleanup,
// also when the test fails. It needs root and iproute2.
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// TB is the part of testing.TB that netlab needs, so that the lab can build the same
// network outside a test.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Require skips the test, saying why, when namespaces cannot be made here.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command (make deps)")
	}
}

// NS is a network namespace.
type NS struct {
	Name string
	t    TB
}

// NewNS creates a namespace with loopback up and duplicate address detection off (so
// IPv6 addresses are usable at once), removed when the test ends, processes in it killed.
func NewNS(t TB, role string) *NS {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return NewNamedNS(t, "herald-"+role+"-"+hex.EncodeToString(b))
}

// NewNamedNS is NewNS with the namespace's name chosen by the caller.
func NewNamedNS(t TB, name string) *NS {
	t.Helper()
	n := &NS{Name: name, t: t}
	run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() { DeleteNS(n.Name) })
	n.Run("ip", "link", "set", "lo", "up")
	n.Run("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return n
}

// DeleteNS kills every process in the named namespace and deletes it; it does nothing
// when there is no such namespace.
func DeleteNS(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			_ = exec.Command("kill", "-9", pid).Run()
		}
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
}

// Run runs a command inside the namespace and returns its output, failing the test on error.
func (n *NS) Run(args ...string) string {
	n.t.Helper()
	return run(n.t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Do runs f on an OS thread inside the namespace. Sockets f opens stay in the namespace
// and may be used from any goroutine afterwards.
func (n *NS) Do(f func() error) error {
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := InNamespace(target, f); err != nil {
		return fmt.Errorf("in namespace %s: %w", n.Name, err)
	}
	return nil
}

// InNamespace runs f on an OS thread inside the namespace of handle h.
func InNamespace(h netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread stays locked if switching back fails: it must not be reused, and the
		// runtime ends a locked thread when its goroutine exits.
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials from inside the namespace; the connection may then be used from any
// goroutine. It suits rest.Config.Dial and http.Transport.DialContext.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return n.DialFrom(0)(ctx, network, address)
}

// DialFrom is DialContext from source port port (0: the kernel's choice), for a test that
// needs to know which of a flow-hashing balancer's buckets its connection falls into.
func (n *NS) DialFrom(port uint16) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		d := &net.Dialer{}
		if port != 0 {
			d.LocalAddr = &net.TCPAddr{Port: int(port)}
		}
		var c net.Conn
		err := n.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// Bridge creates bridge name in the namespace, up, with multicast snooping off so that
// neighbour discovery reaches every port.
func (n *NS) Bridge(name string) {
	n.t.Helper()
	n.Run("ip", "link", "add", name, "type", "bridge", "mcast_snooping", "0")
	n.Run("ip", "link", "set", name, "up")
}

// Plug links host's interface dev to bridge br of namespace sw, through a veth whose
// bridge end is named port.
func Plug(t TB, sw *NS, br, port string, host *NS, dev string) {
	t.Helper()
	Veth(t, sw, port, host, dev)
	sw.Run("ip", "link", "set", port, "master", br)
}

// MAC returns the hardware address of an interface of the namespace.
func (n *NS) MAC(dev string) string {
	n.t.Helper()
	return strings.TrimSpace(n.Run("cat", "/sys/class/net/"+dev+"/address"))
}

// Veth links namespace a's interface aName with namespace b's bName, both up.
func Veth(t TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	a.Run("ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	a.Run("ip", "link", "set", aName, "up")
	b.Run("ip", "link", "set", bName, "up")
}

// Addr adds an address (CIDR) to an interface of the namespace.
func (n *NS) Addr(dev, cidr string) {
	n.t.Helper()
	n.Run("ip", "addr", "add", cidr, "dev", dev)
}

func run(t TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
