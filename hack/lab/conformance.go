package main

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/heraldlb/herald/hack/oci"
)

// The images Kubernetes' e2e suite asks for in the LoadBalancers specs
// (test/utils/image/manifest.go at the release hack/conformance builds).
const (
	agnhostVersion = "2.66.1"
	agnhostImage   = "registry.k8s.io/e2e-test-images/agnhost:" + agnhostVersion
	busyboxImage   = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
)

// The tools the specs run inside agnhost's container (kubectl exec), as upstream's image
// has them: a shell, curl, OpenBSD's netcat (busybox's lacks -v -t -u), ip, ss and wget.
// They come from this machine's Debian, with the libraries they load; netcat-openbsd
// from its Debian package, fetched (not installed) with apt-get download.
var tools = map[string]string{ // path in the image: path here
	"/bin/sh":       "/usr/bin/dash",
	"/usr/bin/curl": "/usr/bin/curl",
	"/usr/bin/wget": "/usr/bin/wget",
	"/usr/bin/ip":   "/usr/sbin/ip",
	"/usr/bin/ss":   "/usr/bin/ss",
}

// conformance runs Kubernetes' own LoadBalancers specs (e2e.test from hack/conformance,
// in bin) against the running lab, from the runner's namespace behind the router.
func (l *lab) conformance(bin, focus, skip string) error {
	if !l.running() {
		return errors.New("the lab is not running: make lab first")
	}
	if focus == "" {
		focus = "LoadBalancers"
	}
	out := filepath.Join(dir, "conformance")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	step("agnhost %s and the tools its specs run, as %s and %s, into every node's containerd", agnhostVersion, agnhostImage, busyboxImage)
	tars, err := e2eImages(bin, out)
	if err != nil {
		return err
	}
	for _, n := range []string{"node1", "node2", "node3"} {
		sock := filepath.Join(dir, "nodes", n, "containerd.sock")
		for _, tar := range tars {
			if b, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "images", "import", "--no-unpack", tar).CombinedOutput(); err != nil {
				return fmt.Errorf("%s: import %s: %v\n%s", n, tar, err, b)
			}
		}
	}
	logPath := filepath.Join(out, "e2e.log")
	step("e2e.test --ginkgo.focus=%q --ginkgo.skip=%q from %s (log: %s)", focus, skip, prefix+"runner", logPath)
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	start := time.Now()
	args := []string{"netns", "exec", prefix + "runner", filepath.Join(bin, "e2e.test"),
		"--provider=local", "--kubeconfig=" + l.kubeconfig(), "--kubectl-path=" + l.kubectl,
		"--ginkgo.focus=" + focus, "--ginkgo.no-color", "--ginkgo.timeout=4h",
		"--report-dir=" + out, "--test.timeout=0"}
	if skip != "" { // an empty --ginkgo.skip would skip every spec
		args = append(args, "--ginkgo.skip="+skip)
	}
	cmd := exec.Command("ip", args...)
	cmd.Dir = out
	cmd.Stdout = io.MultiWriter(os.Stdout, logf)
	cmd.Stderr = cmd.Stdout
	runErr := cmd.Run()
	took := time.Since(start).Round(time.Second)
	fmt.Printf("\n==> e2e.test took %s; the specs' outcomes:\n", took)
	summarize(filepath.Join(out, "junit_01.xml"), logPath)
	var exit *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exit) {
		return runErr
	}
	return nil // failed specs are the result, not an error of the run
}

// summarize prints the outcome of every spec that ran (passed, failed, or skipped by
// the spec itself, with its reason) from the suite's JUnit report, then ginkgo's counts
// from the log. Specs left out by FOCUS or SKIP are not listed.
func summarize(junitPath, logPath string) {
	var report struct {
		Suites []struct {
			Cases []struct {
				Name    string `xml:"name,attr"`
				Status  string `xml:"status,attr"`
				Time    string `xml:"time,attr"`
				Skipped *struct {
					Message string `xml:"message,attr"`
				} `xml:"skipped"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if b, err := os.ReadFile(junitPath); err == nil && xml.Unmarshal(b, &report) == nil {
		for _, suite := range report.Suites {
			for _, c := range suite.Cases {
				if c.Status == "skipped" && (c.Skipped == nil || c.Skipped.Message == "skipped") {
					continue // not selected
				}
				if !strings.HasPrefix(c.Name, "[It] ") && c.Status == "passed" {
					continue // the suite's setup and teardown
				}
				why := ""
				switch {
				case c.Failure != nil:
					why = ": " + firstLine(c.Failure.Message+c.Failure.Text)
				case c.Skipped != nil:
					why = ": " + firstLine(c.Skipped.Message)
				}
				fmt.Printf("  %-8s %ss  %s%s\n", strings.ToUpper(c.Status), trimSeconds(c.Time), strings.TrimPrefix(c.Name, "[It] "), why)
			}
		}
	}
	f, err := os.Open(logPath)
	if err != nil {
		return
	}
	defer f.Close()
	counts := regexp.MustCompile(`^Ran \d+ of \d+ Specs|^(FAIL|SUCCESS)! -- `)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if counts.MatchString(sc.Text()) {
			fmt.Println(sc.Text())
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func trimSeconds(s string) string {
	if whole, _, ok := strings.Cut(s, "."); ok {
		return whole
	}
	return s
}

// e2eImages writes the agnhost image (and the same files under busybox's name) into out
// and returns the tar files.
func e2eImages(bin, out string) ([]string, error) {
	agnhost, err := os.ReadFile(filepath.Join(bin, "agnhost-"+agnhostVersion))
	if err != nil {
		return nil, fmt.Errorf("agnhost: %w (hack/conformance/build.sh builds it)", err)
	}
	files := []oci.File{{Path: "/agnhost", Mode: 0o755, Data: agnhost},
		{Path: "/etc/wgetrc", Mode: 0o644, Data: []byte("# one try: a check that a port is blocked must not wait through 20 retries\ntries = 1\n")},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\n")},
		{Path: "/tmp/.keep", Mode: 0o644}, {Path: "/uploads/.keep", Mode: 0o644}, // directories agnhost writes to
	}
	nc, err := netcatOpenBSD(out)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	add := func(in, src string) error {
		if have[in] {
			return nil
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		have[in] = true
		files = append(files, oci.File{Path: in, Mode: 0o755, Data: b})
		return nil
	}
	bins := map[string]string{"/usr/bin/nc": nc}
	for in, src := range tools {
		bins[in] = src
	}
	// The few coreutils the specs' shell lines use, from a static busybox (one copy per
	// name: the image writer makes no links).
	for _, applet := range []string{"cat", "head", "sleep", "seq", "timeout", "grep", "sed", "hostname"} {
		bins["/bin/"+applet] = "/usr/bin/busybox"
	}
	for _, in := range slices.Sorted(func(yield func(string) bool) {
		for k := range bins {
			if !yield(k) {
				return
			}
		}
	}) {
		src := bins[in]
		if err := add(in, src); err != nil {
			return nil, err
		}
		libs, err := libraries(src)
		if err != nil {
			return nil, err
		}
		for _, lib := range libs {
			if err := add(lib, lib); err != nil {
				return nil, err
			}
		}
	}
	var tars []string
	for _, img := range []oci.Image{
		{Name: agnhostImage, Files: files, Config: oci.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}}},
		{Name: busyboxImage, Files: files, Config: oci.Config{Cmd: []string{"/bin/sh"}}},
	} {
		name := strings.NewReplacer("/", "_", ":", "_").Replace(img.Name)
		p := filepath.Join(out, name+".tar")
		if err := oci.Write(p, img); err != nil {
			return nil, err
		}
		tars = append(tars, p)
	}
	return tars, nil
}

// libraries lists the shared objects a binary loads (ldd), the loader among them.
func libraries(path string) ([]string, error) {
	b, err := exec.Command("ldd", path).CombinedOutput()
	if strings.Contains(string(b), "not a dynamic executable") {
		return nil, nil // static
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", path, err)
	}
	var out []string
	for _, f := range strings.Fields(string(b)) {
		if strings.HasPrefix(f, "/") && !strings.HasPrefix(f, "/tmp") {
			out = append(out, f)
		}
	}
	return out, nil
}

// netcatOpenBSD returns nc.openbsd from Debian's netcat-openbsd package, fetched once
// into out (apt-get download; nothing is installed).
func netcatOpenBSD(out string) (string, error) {
	x := filepath.Join(out, "netcat-openbsd")
	nc := filepath.Join(x, "bin", "nc.openbsd")
	if _, err := os.Stat(nc); err == nil {
		return nc, nil
	}
	dl := exec.Command("apt-get", "download", "netcat-openbsd")
	dl.Dir = out
	if b, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download netcat-openbsd: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "netcat-openbsd_*.deb"))
	if len(debs) == 0 {
		return "", errors.New("apt-get download netcat-openbsd left no .deb")
	}
	if b, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, b)
	}
	return nc, nil
}
