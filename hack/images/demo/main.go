// Command demo is the lab's sample application: an HTTP server that answers every
// request with the name of its pod and of the node it runs on ($POD_NAME, $NODE_NAME,
// from the downward API), so that a client sees which backend served it.
package main

import (
	"cmp"
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	pod, node := cmp.Or(os.Getenv("POD_NAME"), "pod"), cmp.Or(os.Getenv("NODE_NAME"), "node")
	addr := ":" + cmp.Or(os.Getenv("PORT"), "80")
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s on %s\n", pod, node)
	})}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
