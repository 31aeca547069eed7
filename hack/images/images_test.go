package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
)

// Herald's image holds the three static binaries and runs the controller as user 65532,
// as config/ expects; the manifests' commands name files that are in it.
func TestHeraldImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	tars, err := Build(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blobs := readTar(t, tars[Herald])
	var index struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	unmarshal(t, blobs["index.json"], &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != "docker.io/library/"+Herald {
		t.Fatalf("index %+v", index)
	}
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	unmarshal(t, blobs[blob(index.Manifests[0].Digest)], &manifest)
	var cfg struct {
		Config struct {
			Entrypoint []string
			User       string
		}
	}
	unmarshal(t, blobs[blob(manifest.Config.Digest)], &cfg)
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/controller"}) || cfg.Config.User != "65532:65532" {
		t.Errorf("image config %+v, want entrypoint /controller as user 65532:65532", cfg.Config)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobs[blob(manifest.Layers[0].Digest)]))
	if err != nil {
		t.Fatal(err)
	}
	layer := readTarFrom(t, zr)
	for _, name := range []string{"controller", "speaker", "speaker-bgp", "kubectl-herald"} {
		b, ok := layer[name]
		if !ok {
			t.Errorf("/%s is not in the image", name)
			continue
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("/%s: %v", name, err)
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
