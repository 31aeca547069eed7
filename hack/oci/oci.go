// Package oci writes container images as OCI image layouts in a tar file, without a
// container engine: one layer of the given files, and a config saying how the image runs;
// for several platforms, an image index with one such image per platform.
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

// Platform is what an image's binaries run on, as an image index names it.
type Platform struct {
	OS           string // "linux"
	Architecture string // GOARCH: "amd64", "arm64"
}

// String is the platform as ctr and docker spell it: linux/arm64.
func (p Platform) String() string { return p.OS + "/" + p.Architecture }

// Image is a one-layer image with a name.
type Image struct {
	// Name is the image's full reference, docker.io/library/herald:dev; kubelets look up
	// "herald:dev" under it.
	Name  string
	Files []File
	// Platform is what Files run on; linux/amd64 when empty.
	Platform Platform
	Config   Config
}

// Index is one image for several platforms: an OCI image index with a manifest per
// platform, under one name. A container runtime takes the manifest of its own platform.
type Index struct {
	Name   string  // as Image.Name
	Images []Image // one per platform; their Names are not used
}

// Write writes img as an OCI image layout in a tar file at path.
func Write(path string, img Image) error {
	b, err := img.Tar()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// WriteIndex writes idx as an OCI image layout in a tar file at path.
func WriteIndex(path string, idx Index) error {
	b, err := idx.Tar()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Tar returns img as an OCI image layout in a tar file: index.json names the image's
// manifest. The same image gives the same bytes: times are fixed, entries sorted.
func (img Image) Tar() ([]byte, error) {
	blobs, manifest, err := img.blobs()
	if err != nil {
		return nil, err
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaIndex,
		"manifests":     []any{descriptor(mediaManifest, manifest, nameAnnotations(img.Name))},
	})
	if err != nil {
		return nil, err
	}
	return layout(append(blobs, manifest), index)
}

// Tar returns idx as an OCI image layout in a tar file: index.json names an image index,
// which lists each platform's manifest. The same index gives the same bytes.
func (idx Index) Tar() ([]byte, error) {
	if len(idx.Images) == 0 {
		return nil, fmt.Errorf("image %s: no platform", idx.Name)
	}
	var all [][]byte
	var manifests []any
	seen := map[Platform]bool{}
	for _, img := range idx.Images {
		img.Name = idx.Name
		p := img.platform()
		if seen[p] {
			return nil, fmt.Errorf("image %s: platform %s twice", idx.Name, p)
		}
		seen[p] = true
		blobs, manifest, err := img.blobs()
		if err != nil {
			return nil, err
		}
		all = append(append(all, blobs...), manifest)
		d := descriptor(mediaManifest, manifest, nil)
		d["platform"] = map[string]string{"os": p.OS, "architecture": p.Architecture}
		manifests = append(manifests, d)
	}
	inner, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": manifests})
	if err != nil {
		return nil, err
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaIndex,
		"manifests":     []any{descriptor(mediaIndex, inner, nameAnnotations(idx.Name))},
	})
	if err != nil {
		return nil, err
	}
	return layout(append(all, inner), index)
}

// Media types of the OCI image specification.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

func (img Image) platform() Platform {
	if img.Platform == (Platform{}) {
		return Platform{OS: "linux", Architecture: "amd64"}
	}
	return img.Platform
}

// nameAnnotations name an image in index.json: containerd imports it under the full name.
func nameAnnotations(name string) map[string]string {
	return map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": name[strings.LastIndex(name, ":")+1:],
	}
}

// blobs returns the image's layer and config, and its manifest.
func (img Image) blobs() (blobs [][]byte, manifest []byte, err error) {
	layer, diffID, err := img.layer()
	if err != nil {
		return nil, nil, err
	}
	p := img.platform()
	cfg := map[string]any{
		"architecture": p.Architecture, "os": p.OS,
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
		return nil, nil, err
	}
	manifest, err = json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        descriptor(mediaConfig, cfgJSON, nil),
		"layers":        []any{descriptor(mediaLayer, layer, nil)},
	})
	if err != nil {
		return nil, nil, err
	}
	return [][]byte{layer, cfgJSON}, manifest, nil
}

// layout returns an OCI image layout in a tar file holding blobs and index.json.
func layout(blobs [][]byte, index []byte) ([]byte, error) {
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
	written := map[string]bool{}
	for _, blob := range blobs {
		name := "blobs/sha256/" + hexDigest(blob)
		if written[name] { // two platforms may share a blob
			continue
		}
		written[name] = true
		if err := add(name, blob); err != nil {
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
