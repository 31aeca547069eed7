package k8stest

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options says where and how to run a control plane.
type Options struct {
	// Dir holds certificates, etcd's data and the logs (etcd.log, kube-apiserver.log).
	Dir string
	// BindAddress is where kube-apiserver listens; default 127.0.0.1.
	BindAddress string
	// Port is kube-apiserver's port; default a free one.
	Port int
	// BinDir holds etcd and kube-apiserver; default: what Binaries returns.
	BinDir string
	// CommandPrefix runs both processes under another command, for example
	// ["ip", "netns", "exec", "lab-cp"] to run them in a network namespace.
	CommandPrefix []string
	// Detach lets the processes outlive this one (for the lab); their process IDs are
	// written to Dir/NAME.pid for StopDetached.
	Detach bool
	// Dial, when set, is how Config reaches the API server: for one in another network
	// namespace, a dialer that opens its sockets there.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Cluster serves real kubelets, controllers and pods: the Node authorizer, service
	// account tokens, Endpoints for the kubernetes Service (BindAddress must then not be a
	// loopback address), and routing to webhooks by their endpoints.
	Cluster bool
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// Config reaches the API server with cluster-admin rights.
	Config *rest.Config
	// Kubeconfig is a kubeconfig file for the same user, for kubectl.
	Kubeconfig string
	// URL is the API server's address.
	URL string

	procs  []*proc
	logs   []*os.File
	opts   Options
	pki    *pki
	serial int64
}

// proc is a started process and a channel closed once it has exited and been reaped.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs etcd and kube-apiserver and returns once the API server is ready. On error
// nothing is left running.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if opts.Dir == "" {
		return nil, errors.New("control plane: Options.Dir is required")
	}
	if opts.BindAddress == "" {
		opts.BindAddress = "127.0.0.1"
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = Binaries(ctx); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	ip := net.ParseIP(opts.BindAddress)
	if ip == nil {
		return nil, fmt.Errorf("control plane: bind address %q is not an IP address", opts.BindAddress)
	}
	sans := []net.IP{ip, net.IPv4(127, 0, 0, 1)}
	if opts.Cluster {
		sans = append(sans, net.IPv4(10, 96, 0, 1)) // the kubernetes Service, for pods
	}
	certs, err := newPKI(opts.Dir, sans)
	if err != nil {
		return nil, fmt.Errorf("control plane certificates: %w", err)
	}

	cp := &ControlPlane{opts: opts, pki: certs, serial: 100}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	if opts.Port != 0 {
		ports[2] = opts.Port
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if err := cp.run(opts, "etcd",
		"--name=default",
		"--data-dir="+filepath.Join(opts.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--unsafe-no-fsync", // test data: durability buys nothing here
		"--log-level=warn",
	); err != nil {
		return nil, err
	}
	host := net.JoinHostPort(opts.BindAddress, strconv.Itoa(ports[2]))
	cp.URL = "https://" + host
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + opts.BindAddress, "--advertise-address=" + opts.BindAddress,
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--cert-dir=" + filepath.Join(opts.Dir, "apiserver-certs"),
		"--tls-cert-file=" + certs.serverCert, "--tls-private-key-file=" + certs.serverKey,
		"--client-ca-file=" + certs.caCert,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + certs.saKey, "--service-account-signing-key-file=" + certs.saKey,
		"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/108", // dual-stack, so Services may ask for both families
		// As kubeadm and most distributions run it: kube-proxy is privileged, and so is
		// the speaker's init container that sets the forwarding sysctls.
		"--allow-privileged=true",
		"--profiling=false",
	}
	if opts.Cluster {
		kubeletCert, kubeletKey, err := cp.writeClientCert("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
		if err != nil {
			return nil, err
		}
		args = append(args,
			"--authorization-mode=Node,RBAC",
			"--kubelet-client-certificate="+kubeletCert, "--kubelet-client-key="+kubeletKey,
			// The lab has no DNS: logs and exec reach the kubelets by address.
			"--kubelet-preferred-address-types=InternalIP",
			// Webhooks are called at their pods' addresses (the API server's namespace
			// runs no kube-proxy).
			"--enable-aggregator-routing=true",
		)
	} else {
		args = append(args,
			"--authorization-mode=RBAC",
			// No Endpoints for the kubernetes Service: its reconciler refuses a loopback
			// address, and nothing here reaches the API server through a Service.
			"--endpoint-reconciler-type=none",
			"--disable-admission-plugins=ServiceAccount",
		)
	}
	if err := cp.run(opts, "kube-apiserver", args...); err != nil {
		return nil, err
	}
	cp.Config = &rest.Config{
		Host: cp.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: certs.caPEM, CertData: certs.adminCertPEM, KeyData: certs.adminKeyPEM,
		},
		QPS: 1000, Burst: 2000,
		Dial: opts.Dial,
	}
	cp.Kubeconfig = filepath.Join(opts.Dir, "kubeconfig")
	if err := writeKubeconfig(cp.Kubeconfig, cp.URL, certs); err != nil {
		return nil, err
	}
	limit := 90 * time.Second
	if os.Getenv("HERALD_IN_VM") == "1" {
		// Under qemu's software emulation the API server's start takes a minute or
		// more; a CI run once saw it miss 90 s.
		limit = 5 * time.Minute
	}
	if err := cp.waitReady(ctx, limit); err != nil {
		return nil, fmt.Errorf("%w (logs in %s)", err, opts.Dir)
	}
	return cp, nil
}

func (cp *ControlPlane) run(opts Options, name string, args ...string) error {
	logf, err := os.Create(filepath.Join(opts.Dir, name+".log"))
	if err != nil {
		return err
	}
	cp.logs = append(cp.logs, logf)
	argv := append(append([]string{}, opts.CommandPrefix...), filepath.Join(opts.BinDir, name))
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group so Stop takes everything it started; killed with us if we
	// die, unless it is meant to outlive us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if opts.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	if opts.Detach {
		if err := os.WriteFile(filepath.Join(opts.Dir, name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			_ = cmd.Process.Kill()
			return err
		}
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	cp.procs = append(cp.procs, p)
	return nil
}

func (cp *ControlPlane) waitReady(ctx context.Context, limit time.Duration) error {
	client, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		last = err
		for _, p := range cp.procs {
			select {
			case <-p.exited:
				return fmt.Errorf("%s exited before the API server was ready", p.name)
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API server not ready after %s: %v", limit, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeClientCert writes a client certificate for user (in groups) signed by the control
// plane's authority, as NAME.crt and NAME.key in its directory, and returns their paths.
func (cp *ControlPlane) writeClientCert(name, user string, groups ...string) (string, string, error) {
	cp.serial++
	cert, key, err := cp.pki.issue(cp.serial, pkix.Name{CommonName: user, Organization: groups}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return "", "", err
	}
	certPath, keyPath := filepath.Join(cp.opts.Dir, name+".crt"), filepath.Join(cp.opts.Dir, name+".key")
	if err := os.WriteFile(certPath, cert, 0o600); err != nil {
		return "", "", err
	}
	return certPath, keyPath, os.WriteFile(keyPath, key, 0o600)
}

// KubeconfigFor writes, at path, a kubeconfig for user (in groups) with a client
// certificate of its own: what a kubelet, kube-proxy or a controller is given.
func (cp *ControlPlane) KubeconfigFor(path, user string, groups ...string) error {
	cp.serial++
	cert, key, err := cp.pki.issue(cp.serial, pkix.Name{CommonName: user, Organization: groups}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return err
	}
	return writeKubeconfig(path, cp.URL, &pki{caPEM: cp.pki.caPEM, adminCertPEM: cert, adminKeyPEM: key})
}

// CACert is the path of the control plane's certificate authority.
func (cp *ControlPlane) CACert() string { return cp.pki.caCert }

// ServiceAccountKey is the path of the key that signs service account tokens.
func (cp *ControlPlane) ServiceAccountKey() string { return cp.pki.saKey }

// StartComponent runs another control-plane process (kube-controller-manager,
// kube-scheduler) from the binary directory, the way etcd and kube-apiserver run: logged
// to NAME.log, stopped by Stop.
func (cp *ControlPlane) StartComponent(name string, args ...string) error {
	return cp.run(cp.opts, name, args...)
}

// Pid returns the process ID of the named component ("etcd", "kube-apiserver"), 0 when
// it does not run.
func (cp *ControlPlane) Pid(name string) int {
	for _, p := range cp.procs {
		if p.name == name {
			return p.cmd.Process.Pid
		}
	}
	return 0
}

// Stop ends both processes and waits for them. It is safe to call more than once.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	cp.procs = nil
	for _, f := range cp.logs {
		f.Close()
	}
	cp.logs = nil
}

// freePorts finds n TCP ports free on this network namespace's loopback. (A control plane
// run in another namespace through CommandPrefix has a loopback of its own, where these
// ports are all the more free.)
func freePorts(n int) ([]int, error) {
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

func writeKubeconfig(path, server string, certs *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["herald"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: certs.caPEM}
	cfg.AuthInfos["herald-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: certs.adminCertPEM, ClientKeyData: certs.adminKeyPEM}
	cfg.Contexts["herald"] = &clientcmdapi.Context{Cluster: "herald", AuthInfo: "herald-admin", Namespace: "default"}
	cfg.CurrentContext = "herald"
	return clientcmd.WriteToFile(*cfg, path)
}

// StopDetached stops the processes a detached control plane in dir left running, and
// any other process whose ID is in a dir/*.pid file. It is safe when nothing runs.
func StopDetached(dir string) error {
	pids, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range pids {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || pid <= 1 {
			return fmt.Errorf("%s: not a process ID", f)
		}
		if err := StopProcessGroup(pid, 10*time.Second); err != nil {
			return err
		}
		os.Remove(f)
	}
	return nil
}

// StopProcessGroup ends the process group led by pid: SIGTERM, then SIGKILL after grace.
func StopProcessGroup(pid int, grace time.Duration) error {
	if syscall.Kill(-pid, syscall.SIGTERM) != nil {
		return nil // already gone
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(-pid, 0) != nil {
			return nil
		}
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("kill process group %d: %w", pid, err)
	}
	return nil
}
