// Package images builds the container images the lab's cluster runs, from this
// repository, without a container engine: Herald's own (controller, speaker and the
// kubectl plugin, static, as config/ expects them), the pause image, and the demo
// application. Each is an OCI image layout in a tar file (hack/oci).
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

// Build compiles what the images hold and writes them into dir; it returns the tar file
// of each image by name.
func Build(ctx context.Context, dir string) (map[string]string, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, err
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin+"/",
		"./controller", "./speaker", "./speaker-bgp", "./kubectl-herald", "./hack/images/pause", "./hack/images/demo")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the images' binaries: %v\n%s", err, out)
	}
	read := func(name string) oci.File {
		b, rerr := os.ReadFile(filepath.Join(bin, name))
		if rerr != nil && err == nil {
			err = rerr
		}
		return oci.File{Path: "/" + name, Mode: 0o755, Data: b}
	}
	imgs := []oci.Image{
		{Name: "docker.io/library/" + Herald, Files: []oci.File{read("controller"), read("speaker"), read("speaker-bgp"), read("kubectl-herald")},
			Config: oci.Config{Entrypoint: []string{"/controller"}, User: nonRoot}},
		{Name: "docker.io/library/" + Pause, Files: []oci.File{read("pause")}, Config: oci.Config{Entrypoint: []string{"/pause"}}},
		{Name: "docker.io/library/" + Demo, Files: []oci.File{read("demo")}, Config: oci.Config{Entrypoint: []string{"/demo"}}},
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
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
