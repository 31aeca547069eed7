// Command vm runs a package's tests inside a virtual machine booted from Debian's cloud
// kernel, whose modules include ip_vs (this machine's kernel has none).
//
//	go run ./hack/vm [-run REGEXP | -bench REGEXP [-count N] [-cpuprofile FILE] [-icount]] [-timeout 5m] [-control-plane] [-bin ./speaker,...] PACKAGE...
//
// It downloads linux-image-cloud-amd64 with apt-get download (once, cached in
// ~/.cache/herald/vm), builds each package's test binary statically, packs them with
// busybox-static and the needed modules into an initramfs, boots it with
// qemu-system-x86_64 -accel tcg, streams the console, and exits with the tests' status.
// Inside, the tests see HERALD_IN_VM=1. With -control-plane, etcd and kube-apiserver go
// in too (HERALD_CONTROL_PLANE_BIN points the tests at them) and the VM gets more memory.
// With -bin, the named commands are built statically into /herald (HERALD_VM_BIN names
// the directory), for tests that run them as processes.
// Needs: qemu-system-x86, busybox-static, cpio, xz-utils.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/heraldlb/herald/pkg/forward"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// modules the tests need; their dependencies are added from modules.dep.
// Each IPVS scheduler Herald offers is a module of its own.
var modules = append([]string{
	"ip_vs", "nf_conntrack", "nf_defrag_ipv4", "nf_defrag_ipv6", "veth", "dummy", "bridge", "nf_tables", "nft_chain_nat", "nft_nat", "nft_numgen", "nft_masq", "nft_ct", "nft_reject_inet",
}, schedulerModules()...)

func schedulerModules() []string {
	var out []string
	for _, s := range forward.Schedulers {
		out = append(out, "ip_vs_"+s)
	}
	return out
}

func main() {
	run := flag.String("run", ".", "tests to run (-test.run)")
	bench := flag.String("bench", "", "benchmarks to run instead of the tests (-test.bench, once each)")
	timeout := flag.Duration("timeout", 10*time.Minute, "limit for the whole VM run")
	count := flag.Int("count", 1, "with -bench: run each benchmark this many times (-test.count)")
	profile := flag.String("cpuprofile", "", "with -bench and one package: write the benchmarks' CPU profile, taken inside the VM, to this file")
	icount := flag.Bool("icount", false, "run the guest on instruction-counted time (qemu -icount shift=0,sleep=off): one nanosecond per instruction, whatever the load on this machine, so figures can be compared across runs and the guest's timers do not fire late because the host is busy")
	cp := flag.Bool("control-plane", false, "put etcd and kube-apiserver (hack/build-control-plane.sh) in the VM for the tests")
	bins := flag.String("bin", "", "comma-separated command packages (./speaker) built into the VM's /herald for the tests to run")
	flag.Parse()
	if flag.NArg() == 0 || (*profile != "" && (*bench == "" || flag.NArg() != 1)) || *count < 1 {
		fmt.Fprintln(os.Stderr, "usage: vm [-run REGEXP | -bench REGEXP [-count N] [-cpuprofile FILE]] [-timeout D] PACKAGE...")
		os.Exit(2)
	}
	args := "-test.v -test.run '" + strings.ReplaceAll(*run, "'", "") + "'"
	if *bench != "" {
		args = "-test.run '^$' -test.benchtime 1x -test.count " + strconv.Itoa(*count) + " -test.bench '" + strings.ReplaceAll(*bench, "'", "") + "'"
		if *profile != "" {
			args += " -test.cpuprofile " + vmProfile
		}
	}
	var cmds []string
	if *bins != "" {
		cmds = strings.Split(*bins, ",")
	}
	code, err := vm(flag.Args(), cmds, args, *timeout, *cp, *profile, *icount)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vm:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

// vmProfile is where a CPU profile is written inside the VM; the console carries it out
// in base64 between profileBegin and profileEnd.
const (
	vmProfile    = "/tmp/cpu.prof"
	profileBegin = "HERALD-VM-PROFILE-BEGIN"
	profileEnd   = "HERALD-VM-PROFILE-END"
)

func vm(pkgs, cmds []string, testArgs string, timeout time.Duration, controlPlane bool, profile string, icount bool) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	kernel, modDir, err := fetchKernel(ctx)
	if err != nil {
		return 0, err
	}
	work, err := os.MkdirTemp("", "herald-vm-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "lib/modules", "run", "tests", "herald"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return 0, err
		}
	}
	// The tests, static, one binary per package.
	for i, pkg := range pkgs {
		build := exec.CommandContext(ctx, "go", "test", "-c", "-o", filepath.Join(root, "tests", fmt.Sprintf("%02d-%s", i, filepath.Base(pkg))), pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("build the tests of %s: %v\n%s", pkg, err, out)
		}
	}
	// Commands the tests run as processes, static too.
	for _, cmd := range cmds {
		build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(root, "herald", filepath.Base(cmd)), cmd)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("build %s: %v\n%s", cmd, err, out)
		}
	}
	memory, env := "1024", "HERALD_IN_VM=1 HERALD_VM_BIN=/herald"
	if controlPlane {
		dir, err := k8stest.Binaries(ctx)
		if err != nil {
			return 0, err
		}
		for _, b := range []string{"etcd", "kube-apiserver"} {
			if err := copyFile(filepath.Join(dir, b), filepath.Join(root, "bin", b), 0o755); err != nil {
				return 0, err
			}
		}
		memory, env = "3072", env+" HERALD_CONTROL_PLANE_BIN=/bin"
	}
	if err := copyFile("/bin/busybox", filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return 0, fmt.Errorf("busybox-static: %w", err)
	}
	order, err := stageModules(modDir, filepath.Join(root, "lib", "modules"))
	if err != nil {
		return 0, err
	}
	init := "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n" +
		"mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\nmount -t tmpfs tmp /tmp\nmount -t tmpfs run /run\n" +
		"mkdir -p /run/netns\n"
	for _, m := range order {
		init += "insmod /lib/modules/" + m + " 2>/dev/null || echo 'insmod " + m + " failed'\n"
	}
	init += "ip link set lo up\ncd /tmp\nrc=0\nfor t in /tests/*; do\n  echo \"== $t\"\n" +
		"  " + env + " $t " + testArgs + " || rc=1\ndone\n" +
		"echo \"HERALD-VM-RESULT $rc\"\n"
	if profile != "" {
		init += "if [ -f " + vmProfile + " ]; then echo " + profileBegin + "; base64 " + vmProfile + "; echo " + profileEnd + "; fi\n"
	}
	init += "poweroff -f\n"
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		return 0, err
	}
	initrd := filepath.Join(work, "initrd.gz")
	pack := exec.CommandContext(ctx, "sh", "-c", "cd "+root+" && find . | cpio -o -H newc --quiet | gzip -1 > "+initrd)
	if out, err := pack.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("pack the initramfs: %v\n%s", err, out)
	}
	qemuArgs := []string{"-accel", "tcg", "-m", memory, "-smp", "1",
		"-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet"}
	if icount {
		qemuArgs = append(qemuArgs, "-icount", "shift=0,sleep=off")
	}
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", qemuArgs...)
	out, err := qemu.StdoutPipe()
	if err != nil {
		return 0, err
	}
	qemu.Stderr = os.Stderr
	if err := qemu.Start(); err != nil {
		return 0, fmt.Errorf("start qemu: %w", err)
	}
	result := -1
	re := regexp.MustCompile(`HERALD-VM-RESULT (\d+)`)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var prof *strings.Builder // the profile's base64 lines while they pass
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case line == profileBegin:
			prof = &strings.Builder{}
			continue
		case line == profileEnd && prof != nil:
			b, err := base64.StdEncoding.DecodeString(prof.String())
			if err == nil {
				err = os.WriteFile(profile, b, 0o644)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "vm: the CPU profile:", err)
			}
			prof = nil
			continue
		case prof != nil:
			prof.WriteString(strings.TrimSpace(line))
			continue
		}
		fmt.Println(line)
		if m := re.FindStringSubmatch(line); m != nil {
			result, _ = strconv.Atoi(m[1])
		}
	}
	_ = qemu.Wait()
	if ctx.Err() != nil {
		return 0, fmt.Errorf("the VM did not finish within %s", timeout)
	}
	if result < 0 {
		return 0, errors.New("the VM stopped without reporting the tests' result")
	}
	return result, nil
}

// fetchKernel downloads and unpacks Debian's cloud kernel once, with a modules.dep made
// by depmod (the package leaves it to installation); it returns the kernel image and the
// modules directory.
func fetchKernel(ctx context.Context) (string, string, error) {
	home, _ := os.UserHomeDir()
	cache := filepath.Join(home, ".cache", "herald", "vm")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", "", err
	}
	k, m, ok := findKernel(cache)
	if !ok {
		dep, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-cloud-amd64").Output()
		if err != nil {
			return "", "", fmt.Errorf("apt-cache depends linux-image-cloud-amd64 (run apt-get update?): %w", err)
		}
		pkg := regexp.MustCompile(`Depends: (linux-image-\S+-cloud-amd64)`).FindSubmatch(dep)
		if pkg == nil {
			return "", "", fmt.Errorf("no kernel image among %q", dep)
		}
		dl := exec.CommandContext(ctx, "apt-get", "download", string(pkg[1]))
		dl.Dir = cache
		if out, err := dl.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("apt-get download %s: %v\n%s", pkg[1], err, out)
		}
		debs, _ := filepath.Glob(filepath.Join(cache, string(pkg[1])+"_*.deb"))
		if len(debs) == 0 {
			return "", "", fmt.Errorf("apt-get download left no %s package", pkg[1])
		}
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], filepath.Join(cache, "root")).CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("dpkg-deb -x: %v\n%s", err, out)
		}
		if k, m, ok = findKernel(cache); !ok {
			return "", "", errors.New("the kernel package holds no vmlinuz")
		}
	}
	if _, err := os.Stat(filepath.Join(m, "modules.dep")); err != nil {
		ver := filepath.Base(m)
		if out, err := exec.CommandContext(ctx, "depmod", "-b", filepath.Join(cache, "root"), ver).CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("depmod %s (kmod): %v\n%s", ver, err, out)
		}
	}
	return k, m, nil
}

func findKernel(cache string) (string, string, bool) {
	ks, _ := filepath.Glob(filepath.Join(cache, "root", "boot", "vmlinuz-*"))
	if len(ks) == 0 {
		return "", "", false
	}
	ver := strings.TrimPrefix(filepath.Base(ks[0]), "vmlinuz-")
	return ks[0], filepath.Join(cache, "root", "lib", "modules", ver), true
}

// stageModules copies the wanted modules and their dependencies (from modules.dep),
// decompressed, and returns them in load order (dependencies first).
func stageModules(modDir, dst string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	deps := map[string][]string{} // path -> dependencies' paths
	byName := map[string]string{} // module name -> path
	for _, line := range strings.Split(string(data), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		name := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(mod), ".xz"), ".ko")
		byName[strings.ReplaceAll(name, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range deps[p] {
			visit(d)
		}
		order = append(order, p)
	}
	for _, m := range modules {
		if p, ok := byName[m]; ok {
			visit(p)
		}
	}
	var out []string
	for _, p := range order {
		name := strings.TrimSuffix(filepath.Base(p), ".xz")
		src := filepath.Join(modDir, p)
		if strings.HasSuffix(p, ".xz") {
			b, err := exec.Command("xz", "-dc", src).Output()
			if err != nil {
				return nil, fmt.Errorf("xz -d %s: %w", p, err)
			}
			if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
				return nil, err
			}
		} else if err := copyFile(src, filepath.Join(dst, name), 0o644); err != nil {
			return nil, err
		}
		out = append(out, name)
	}
	return out, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
