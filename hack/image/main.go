// Command image builds Herald's container image without Docker: an OCI image layout in a
// tar file (bin/herald:dev.tar by default) holding the static controller, speaker,
// speaker-bgp and kubectl-herald, running as user 65532 unless a pod says otherwise, as
// config/ expects. The image is an index for linux/amd64 and linux/arm64 (binaries
// cross-compiled with GOARCH). Import it with `ctr -n k8s.io images import
// bin/herald:dev.tar` on a node (ctr keeps the node's own platform; --all-platforms keeps
// both), or push both platforms with a tool that reads OCI layouts (skopeo copy --all,
// crane). make image runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/heraldlb/herald/hack/images"
)

func main() {
	out := flag.String("o", "bin", "directory for the image tar files")
	flag.Parse()
	tars, err := images.Build(context.Background(), *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	p, _ := filepath.Abs(tars[images.Herald])
	fmt.Printf("%s: %s (", images.Herald, p)
	for i, pl := range images.Platforms {
		if i > 0 {
			fmt.Print(", ")
		}
		fmt.Print(pl)
	}
	fmt.Println(")")
	fmt.Println("import it with: ctr -n k8s.io images import " + p)
}
