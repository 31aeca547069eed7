// Package images builds the container images the lab's cluster runs, from this
// repository, without a container engine: Herald's own (controller, speaker and the
// kubectl plugin, static, as config/ expects them, for linux/amd64 and linux/arm64), the
// pause image, and the demo application. Each is an OCI image layout in a tar file
// (hack/oci).
package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/heraldlb/herald/hack/oci"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// Tag is the tag of every image built here: fixed, so kubelets never pull (":latest"
// would mean imagePullPolicy Always).
const Tag = "dev"

// Names of the images, as pods name them.
const (
	Herald = "herald:" + Tag
	Pause  = "herald-pause:" + Tag
	Demo   = "herald-demo:" + Tag
)

// Herald's image runs as this user unless a pod says otherwise (the controller does not;
// the speaker's DaemonSet runs as root with only NET_RAW and NET_ADMIN).
const nonRoot = "65532:65532"

// Root finds the repository's root above the working directory.
func Root() (string, error) { return k8stest.ModuleRoot() }

// Platforms are those Herald's image is built for: an image index with one manifest
// each, from binaries cross-compiled with GOARCH (static, CGO_ENABLED=0).
var Platforms = []oci.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// heraldBinaries are the commands Herald's image holds.
var heraldBinaries = []string{"controller", "speaker", "speaker-bgp", "kubectl-herald"}

// Build compiles what the images hold and writes them into dir; it returns the tar file
// of each image by name. Herald's image is an index for every one of Platforms; the pause
// and demo images are for this machine's platform only (the lab runs them here).
func Build(ctx context.Context, dir string) (map[string]string, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "bin")
	gobuild := func(out string, env []string, pkgs ...string) error {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		build := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", out + "/"}, pkgs...)...)
		build.Dir = root
		build.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
		if msg, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %v (%v): %v\n%s", pkgs, env, err, msg)
		}
		return nil
	}
	read := func(dir, name string) oci.File {
		b, rerr := os.ReadFile(filepath.Join(dir, name))
		if rerr != nil && err == nil {
			err = rerr
		}
		return oci.File{Path: "/" + name, Mode: 0o755, Data: b}
	}
	herald := oci.Index{Name: "docker.io/library/" + Herald}
	for _, p := range Platforms {
		out := filepath.Join(bin, p.OS+"-"+p.Architecture)
		var pkgs []string
		for _, b := range heraldBinaries {
			pkgs = append(pkgs, "./"+b)
		}
		if err := gobuild(out, []string{"GOOS=" + p.OS, "GOARCH=" + p.Architecture}, pkgs...); err != nil {
			return nil, err
		}
		img := oci.Image{Platform: p, Config: oci.Config{Entrypoint: []string{"/controller"}, User: nonRoot}}
		for _, b := range heraldBinaries {
			img.Files = append(img.Files, read(out, b))
		}
		herald.Images = append(herald.Images, img)
	}
	if err := gobuild(bin, nil, "./hack/images/pause", "./hack/images/demo"); err != nil {
		return nil, err
	}
	imgs := []oci.Image{
		{Name: "docker.io/library/" + Pause, Files: []oci.File{read(bin, "pause")}, Config: oci.Config{Entrypoint: []string{"/pause"}}},
		{Name: "docker.io/library/" + Demo, Files: []oci.File{read(bin, "demo")}, Config: oci.Config{Entrypoint: []string{"/demo"}}},
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	path := filepath.Join(dir, Herald+".tar")
	if err := oci.WriteIndex(path, herald); err != nil {
		return nil, fmt.Errorf("write image %s: %w", Herald, err)
	}
	out[Herald] = path
	for _, img := range imgs {
		name := filepath.Base(img.Name)
		path := filepath.Join(dir, name+".tar")
		if err := oci.Write(path, img); err != nil {
			return nil, fmt.Errorf("write image %s: %w", name, err)
		}
		out[name] = path
	}
	return out, nil
}

// Import imports an image tar into the containerd at socket, in the namespace the
// kubelet's CRI uses, as the lab does on every node. Without --all-platforms, ctr keeps
// of an index only the content of this machine's platform, which the kubelet runs; the
// image is unpacked when a container first needs it (--no-unpack).
func Import(ctx context.Context, socket, tar string) error {
	out, err := exec.CommandContext(ctx, "ctr", "--address", socket, "-n", "k8s.io", "images", "import", "--no-unpack", tar).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %v\n%s", tar, err, out)
	}
	return nil
}
