package oci

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type descriptorJSON struct {
	MediaType   string
	Digest      string
	Size        int
	Annotations map[string]string
	Platform    *struct{ OS, Architecture string }
}

// An index is a valid OCI image layout: every descriptor points at a blob of its size and
// digest, index.json names one image index, and that lists one manifest per platform
// whose config says the same platform. The same index gives the same bytes.
func TestIndexLayout(t *testing.T) {
	idx := Index{Name: "docker.io/library/herald:dev", Images: []Image{
		{Platform: Platform{"linux", "amd64"}, Files: []File{{Path: "/bin/x", Mode: 0o755, Data: []byte("amd64")}}, Config: Config{Entrypoint: []string{"/bin/x"}}},
		{Platform: Platform{"linux", "arm64"}, Files: []File{{Path: "/bin/x", Mode: 0o755, Data: []byte("arm64")}}, Config: Config{Entrypoint: []string{"/bin/x"}}},
	}}
	b, err := idx.Tar()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := idx.Tar()
	if !bytes.Equal(b, again) {
		t.Error("the same index gave different bytes")
	}
	files := untar(t, b)
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", got)
	}
	blob := func(d descriptorJSON) []byte {
		t.Helper()
		data, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("no blob %s", d.Digest)
		}
		sum := sha256.Sum256(data)
		if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest || len(data) != d.Size {
			t.Fatalf("blob %s: digest or size (%d, descriptor %d) wrong", d.Digest, len(data), d.Size)
		}
		return data
	}
	var top struct{ Manifests []descriptorJSON }
	unmarshal(t, files["index.json"], &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != mediaIndex ||
		top.Manifests[0].Annotations["io.containerd.image.name"] != idx.Name || top.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "dev" {
		t.Fatalf("index.json %+v", top)
	}
	var inner struct {
		SchemaVersion int
		MediaType     string
		Manifests     []descriptorJSON
	}
	unmarshal(t, blob(top.Manifests[0]), &inner)
	if inner.SchemaVersion != 2 || inner.MediaType != mediaIndex || len(inner.Manifests) != 2 {
		t.Fatalf("image index %+v", inner)
	}
	for i, m := range inner.Manifests {
		want := idx.Images[i].Platform
		if m.MediaType != mediaManifest || m.Platform == nil || m.Platform.OS != want.OS || m.Platform.Architecture != want.Architecture {
			t.Errorf("manifest %d: %+v, want %s", i, m, want)
			continue
		}
		var manifest struct {
			Config descriptorJSON
			Layers []descriptorJSON
		}
		unmarshal(t, blob(m), &manifest)
		var cfg struct {
			OS, Architecture string
			Config           struct{ Entrypoint []string }
		}
		unmarshal(t, blob(manifest.Config), &cfg)
		if cfg.OS != want.OS || cfg.Architecture != want.Architecture {
			t.Errorf("%s: config says %s/%s", want, cfg.OS, cfg.Architecture)
		}
		if d := cmp.Diff([]string{"/bin/x"}, cfg.Config.Entrypoint); d != "" {
			t.Errorf("%s: entrypoint (-want +got):\n%s", want, d)
		}
		if len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != mediaLayer {
			t.Fatalf("%s: layers %+v", want, manifest.Layers)
		}
		blob(manifest.Layers[0])
	}
}

// An index needs a platform, and each platform once.
func TestIndexRefuses(t *testing.T) {
	if _, err := (Index{Name: "x:dev"}).Tar(); err == nil || !strings.Contains(err.Error(), "no platform") {
		t.Errorf("an index without images: %v", err)
	}
	img := Image{Platform: Platform{"linux", "arm64"}}
	if _, err := (Index{Name: "x:dev", Images: []Image{img, img}}).Tar(); err == nil || !strings.Contains(err.Error(), "linux/arm64 twice") {
		t.Errorf("a platform twice: %v", err)
	}
}

// A one-platform image keeps the layout it always had: index.json names its manifest.
func TestImageLayout(t *testing.T) {
	b, err := Image{Name: "docker.io/library/pause:dev", Files: []File{{Path: "/pause", Mode: 0o755, Data: []byte("p")}}}.Tar()
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, b)
	var top struct{ Manifests []descriptorJSON }
	unmarshal(t, files["index.json"], &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != mediaManifest || top.Manifests[0].Annotations["io.containerd.image.name"] != "docker.io/library/pause:dev" {
		t.Fatalf("index.json %+v", top)
	}
	var manifest struct{ Config descriptorJSON }
	unmarshal(t, files["blobs/sha256/"+strings.TrimPrefix(top.Manifests[0].Digest, "sha256:")], &manifest)
	var cfg struct{ OS, Architecture string }
	unmarshal(t, files["blobs/sha256/"+strings.TrimPrefix(manifest.Config.Digest, "sha256:")], &cfg)
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("config platform %s/%s, want the default linux/amd64", cfg.OS, cfg.Architecture)
	}
}

func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := out[h.Name]; dup {
			t.Errorf("%s twice in the tar", h.Name)
		}
		out[h.Name], _ = io.ReadAll(tr)
	}
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}
