package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// built holds the images of one Build, shared by the tests that read them.
var built struct {
	once sync.Once
	tars map[string]string
	dir  string
	err  error
}

func buildOnce(t *testing.T) map[string]string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "herald-images-"); built.err == nil {
			built.tars, built.err = Build(context.Background(), built.dir)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.tars
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// machines is the ELF machine each platform's binaries must be for.
var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// Herald's image is an index with one manifest per platform; each holds the four static
// binaries for its architecture and runs the controller as user 65532, as config/
// expects; the manifests' commands name files that are in it.
func TestHeraldImage(t *testing.T) {
	tars := buildOnce(t)
	blobs := readTar(t, tars[Herald])
	var layout struct {
		Manifests []struct {
			MediaType   string
			Digest      string
			Annotations map[string]string
		}
	}
	unmarshal(t, blobs["index.json"], &layout)
	if len(layout.Manifests) != 1 || layout.Manifests[0].Annotations["io.containerd.image.name"] != "docker.io/library/"+Herald ||
		layout.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("index.json %+v, want one image index named docker.io/library/%s", layout, Herald)
	}
	var index struct {
		MediaType string
		Manifests []struct {
			MediaType string
			Digest    string
			Platform  struct{ OS, Architecture string }
		}
	}
	unmarshal(t, blobs[blob(layout.Manifests[0].Digest)], &index)
	var platforms []string
	for _, m := range index.Manifests {
		platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
	}
	if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) || index.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("the image index lists %v (media type %q), want %v", platforms, index.MediaType, want)
	}
	for _, m := range index.Manifests {
		arch := m.Platform.Architecture
		t.Run(arch, func(t *testing.T) {
			if m.MediaType != "application/vnd.oci.image.manifest.v1+json" {
				t.Errorf("media type %q", m.MediaType)
			}
			layer, cfg := image(t, blobs, m.Digest)
			if cfg.Architecture != arch || cfg.OS != "linux" {
				t.Errorf("the config says %s/%s, the index linux/%s", cfg.OS, cfg.Architecture, arch)
			}
			if !slices.Equal(cfg.Config.Entrypoint, []string{"/controller"}) || cfg.Config.User != "65532:65532" {
				t.Errorf("image config %+v, want entrypoint /controller as user 65532:65532", cfg.Config)
			}
			for _, name := range heraldBinaries {
				b, ok := layer[name]
				if !ok {
					t.Errorf("/%s is not in the image", name)
					continue
				}
				f, err := elf.NewFile(bytes.NewReader(b))
				if err != nil {
					t.Fatalf("/%s: %v", name, err)
				}
				if f.Machine != machines[arch] {
					t.Errorf("/%s is for %v, want %v", name, f.Machine, machines[arch])
				}
				for _, p := range f.Progs {
					if p.Type == elf.PT_INTERP {
						t.Errorf("/%s is dynamically linked; the image has no libc", name)
					}
				}
			}
			for _, m := range []string{"../../config/controller.yaml", "../../config/speaker.yaml"} {
				text, err := os.ReadFile(m)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range strings.Split(string(text), "\n") {
					if cmd, ok := strings.CutPrefix(strings.TrimSpace(l), `command: ["/`); ok {
						bin, _, _ := strings.Cut(cmd, `"`)
						if _, ok := layer[bin]; !ok {
							t.Errorf("%s runs /%s, which the image does not hold", m, bin)
						}
					}
				}
			}
		})
	}
}

// The arm64 speaker runs: under qemu's user-mode emulator it prints its flags.
func TestARM64SpeakerRuns(t *testing.T) {
	qemu := ""
	for _, name := range []string{"qemu-aarch64-static", "qemu-aarch64"} {
		if p, err := exec.LookPath(name); err == nil {
			qemu = p
			break
		}
	}
	if qemu == "" {
		t.Skip("no qemu-aarch64 or qemu-aarch64-static on PATH (Debian package qemu-user-static, hack/install-deps.sh): the arm64 binaries are checked by their ELF header only")
	}
	tars := buildOnce(t)
	blobs := readTar(t, tars[Herald])
	var layout struct{ Manifests []struct{ Digest string } }
	unmarshal(t, blobs["index.json"], &layout)
	var index struct {
		Manifests []struct {
			Digest   string
			Platform struct{ Architecture string }
		}
	}
	unmarshal(t, blobs[blob(layout.Manifests[0].Digest)], &index)
	i := slices.IndexFunc(index.Manifests, func(m struct {
		Digest   string
		Platform struct{ Architecture string }
	}) bool {
		return m.Platform.Architecture == "arm64"
	})
	if i < 0 {
		t.Fatal("no arm64 manifest")
	}
	layer, _ := image(t, blobs, index.Manifests[i].Digest)
	speaker := filepath.Join(t.TempDir(), "speaker")
	if err := os.WriteFile(speaker, layer["speaker"], 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(ctx, qemu, speaker, "--help").CombinedOutput() // flag's --help exits 0 or 2
	if !strings.Contains(string(out), "-memberlist-port") || !strings.Contains(string(out), "-prepare-forwarding") {
		t.Fatalf("%s %s --help printed:\n%s", filepath.Base(qemu), speaker, out)
	}
}

// The lab's import (Import, as on every node) takes Herald's index into a real containerd:
// the image is listed under its name, its content for this machine's platform is all
// there, and it unpacks to a root file system whose speaker is built for this machine.
func TestImport(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("starts a containerd: needs root")
	}
	for _, b := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("no %s on PATH (Debian package containerd, hack/install-deps.sh)", b)
		}
	}
	tars := buildOnce(t)
	// Not t.TempDir(): its path holds the test's name, and a socket path is short.
	dir, err := os.MkdirTemp("", "herald-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "containerd.sock")
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cd := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	cd.Stdout, cd.Stderr = logf, logf
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cd.Process.Kill()
			<-done
		}
	})
	ctr := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		if err != nil {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("ctr %s: %v\n%s\ncontainerd's log:\n%s", strings.Join(args, " "), err, out, lastLines(string(log), 20))
		}
		return string(out)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := exec.Command("ctr", "--address", sock, "version").Run(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd did not answer in 20 s:\n%s", lastLines(string(log), 20))
		}
	}
	if err := Import(context.Background(), sock, tars[Herald]); err != nil {
		t.Fatal(err)
	}
	name := "docker.io/library/" + Herald
	if ls := ctr("images", "ls", "-q"); !slices.Contains(strings.Fields(ls), name) {
		t.Fatalf("ctr images ls: %q, want %s", ls, name)
	}
	check := ctr("images", "check")
	line := ""
	for _, l := range strings.Split(check, "\n") {
		if strings.HasPrefix(l, name+" ") {
			line = l
		}
	}
	if !strings.Contains(line, "application/vnd.oci.image.index.v1+json") || !strings.Contains(line, "complete") {
		t.Fatalf("ctr images check: %q, want the index, complete for this platform", line)
	}
	// Unpack and mount it as the kubelet's CRI unpacks it when a pod starts (with the
	// native snapshotter: a bind mount, no overlay needed).
	target := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	ctr("images", "mount", "--snapshotter", "native", name, target)
	t.Cleanup(func() {
		if out, err := exec.Command("ctr", "--address", sock, "-n", "k8s.io", "images", "unmount", "--rm", target).CombinedOutput(); err != nil {
			t.Logf("ctr images unmount: %v: %s", err, out)
			_ = syscall.Unmount(target, syscall.MNT_DETACH)
		}
	})
	f, err := elf.Open(filepath.Join(target, "speaker"))
	if err != nil {
		t.Fatalf("the mounted image: %v", err)
	}
	defer f.Close()
	if want := machines[runtime.GOARCH]; f.Machine != want {
		t.Errorf("the imported image's /speaker is for %v, this machine %v", f.Machine, want)
	}
}

// image returns the layer's files and the config of the manifest with digest.
func image(t *testing.T, blobs map[string][]byte, digest string) (map[string][]byte, imageConfig) {
	t.Helper()
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	unmarshal(t, blobs[blob(digest)], &manifest)
	var cfg imageConfig
	unmarshal(t, blobs[blob(manifest.Config.Digest)], &cfg)
	if len(manifest.Layers) != 1 {
		t.Fatalf("manifest %s has %d layers, want 1", digest, len(manifest.Layers))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobs[blob(manifest.Layers[0].Digest)]))
	if err != nil {
		t.Fatal(err)
	}
	return readTarFrom(t, zr), cfg
}

type imageConfig struct {
	Architecture, OS string
	Config           struct {
		Entrypoint []string
		User       string
	}
}

func blob(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return readTarFrom(t, f)
}

func readTarFrom(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = b
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
