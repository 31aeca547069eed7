// Package oci writes container images as OCI image layouts in a tar file, without a
// container engine: one layer of the given files, and a config saying how the image runs.
// containerd imports the result (ctr images import); the lab and `make image` use it for
// Herald's image, the pause image and the demo application.
package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// File is one file of the image's only layer.
type File struct {
	Path string // absolute, in the image ("/speaker")
	Mode int64  // permission bits
	Data []byte
}

// Config is how the image runs.
type Config struct {
	Entrypoint []string
	Cmd        []string
	User       string // "65532:65532"; empty runs as root
	Env        []string
	WorkingDir string
}

// Image is a one-layer image with a name.
type Image struct {
	// Name is the image's full reference, docker.io/library/herald:dev; kubelets look up
	// "herald:dev" under it.
	Name   string
	Files  []File
	Config Config
}

// Write writes img as an OCI image layout in a tar file at path.
func Write(path string, img Image) error {
	b, err := img.Tar()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Tar returns img as an OCI image layout in a tar file. The same image gives the same
// bytes: times are fixed, entries sorted.
func (img Image) Tar() ([]byte, error) {
	layer, diffID, err := img.layer()
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{
			"Entrypoint": img.Config.Entrypoint, "Cmd": img.Config.Cmd, "User": img.Config.User,
			"Env": append([]string{"PATH=/usr/local/bin:/usr/bin:/bin:/"}, img.Config.Env...), "WorkingDir": img.Config.WorkingDir,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created_by": "herald hack/oci", "created": time.Unix(0, 0).UTC().Format(time.RFC3339)}},
		"created": time.Unix(0, 0).UTC().Format(time.RFC3339),
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", cfgJSON, nil),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer, nil)},
	})
	if err != nil {
		return nil, err
	}
	tag := img.Name[strings.LastIndex(img.Name, ":")+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{descriptor("application/vnd.oci.image.manifest.v1+json", manifest, map[string]string{
			"io.containerd.image.name":          img.Name,
			"org.opencontainers.image.ref.name": tag,
		})},
	})
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, ModTime: time.Unix(0, 0), Typeflag: tar.TypeDir}); err != nil {
			return nil, err
		}
	}
	for _, blob := range [][]byte{layer, cfgJSON, manifest} {
		if err := add("blobs/sha256/"+hexDigest(blob), blob); err != nil {
			return nil, err
		}
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := add("index.json", index); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// layer returns the gzipped layer and the digest of its uncompressed tar.
func (img Image) layer() ([]byte, string, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	files := slices.Clone(img.Files)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	dirs := map[string]bool{}
	for _, f := range files {
		if !strings.HasPrefix(f.Path, "/") {
			return nil, "", fmt.Errorf("image %s: file path %q is not absolute", img.Name, f.Path)
		}
		for d := path.Dir(f.Path); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: time.Unix(0, 0), Typeflag: tar.TypeDir}); err != nil {
			return nil, "", err
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(f.Path, "/"), Mode: f.Mode, Size: int64(len(f.Data)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := io.Copy(zw, bytes.NewReader(raw.Bytes())); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), "sha256:" + hexDigest(raw.Bytes()), nil
}

func hexDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func descriptor(mediaType string, blob []byte, annotations map[string]string) map[string]any {
	d := map[string]any{"mediaType": mediaType, "digest": "sha256:" + hexDigest(blob), "size": len(blob)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}
