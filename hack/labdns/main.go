// Command labdns is the lab cluster's DNS: it answers A and AAAA queries for
// NAME.NAMESPACE.svc.DOMAIN with the ClusterIPs of that Service, as read from the API
// server, over UDP and TCP. It is what pods with dnsPolicy ClusterFirst need of cluster
// DNS and nothing more: no headless Services, no pod records, no SRV, no forwarding of
// other names (the lab has no upstream; they get NXDOMAIN at once). The lab reaches it
// through the Service kube-system/kube-dns, as in any cluster.
//
//	labdns --kubeconfig FILE --listen 192.168.10.5:53 --domain cluster.local
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const ttl = 5 // seconds: Services come and go during tests

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	listen := flag.String("listen", "127.0.0.1:53", "address to serve DNS on (UDP and TCP)")
	domain := flag.String("domain", "cluster.local", "the cluster's DNS domain")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*kubeconfig, *listen, *domain, log); err != nil {
		log.Error("labdns", "err", err)
		os.Exit(1)
	}
}

func run(kubeconfig, listen, domain string, log *slog.Logger) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	svcs := factory.Core().V1().Services()
	informer := svcs.Informer()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return ctx.Err()
	}
	r := &resolver{svcs: svcs.Lister(), suffix: ".svc." + strings.Trim(domain, ".") + "."}
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	defer pc.Close()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	defer l.Close()
	log.Info("serving", "listen", listen, "domain", domain)
	go serveUDP(pc, r)
	go serveTCP(l, r)
	<-ctx.Done()
	return nil
}

type resolver struct {
	svcs   corelisters.ServiceLister
	suffix string // ".svc.cluster.local."
}

// answer builds the reply to one query message; nil when the query does not parse.
func (r *resolver) answer(query []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, OpCode: h.OpCode}
	if h.OpCode != 0 {
		resp.RCode = dnsmessage.RCodeNotImplemented
		return build(resp, q, nil)
	}
	ips, found := r.lookup(strings.ToLower(q.Name.String()))
	if !found {
		resp.RCode = dnsmessage.RCodeNameError
		return build(resp, q, nil)
	}
	var answers []netip.Addr
	for _, ip := range ips {
		if (q.Type == dnsmessage.TypeA && ip.Is4()) || (q.Type == dnsmessage.TypeAAAA && ip.Is6()) {
			answers = append(answers, ip)
		}
	}
	return build(resp, q, answers) // none: NOERROR without answers (NODATA)
}

// lookup finds NAME.NAMESPACE in the suffix and returns the Service's ClusterIPs.
func (r *resolver) lookup(name string) ([]netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, r.suffix)
	if !ok {
		return nil, false
	}
	svcName, ns, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(ns, ".") {
		return nil, false
	}
	svc, err := r.svcs.Services(ns).Get(svcName)
	if err != nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, false
	}
	var ips []netip.Addr
	for _, s := range svc.Spec.ClusterIPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, ip)
		}
	}
	return ips, len(ips) > 0 // a headless Service has no address to give
}

func build(h dnsmessage.Header, q dnsmessage.Question, ips []netip.Addr) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	for _, ip := range ips {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}
		if ip.Is4() {
			_ = b.AResource(rh, dnsmessage.AResource{A: ip.As4()})
		} else {
			_ = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: ip.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

func serveUDP(pc net.PacketConn, r *resolver) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if out := r.answer(buf[:n]); out != nil {
			_, _ = pc.WriteTo(out, from)
		}
	}
}

func serveTCP(l net.Listener, r *resolver) {
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		go func() {
			defer c.Close()
			for range 100 { // a bounded number of queries per connection
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				var size [2]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				out := r.answer(q)
				if out == nil {
					return
				}
				if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
					return
				}
			}
		}()
	}
}
