// Command demo is the lab's sample application: an HTTP server that answers every
// request with the name of its pod and of the node it runs on ($POD_NAME, $NODE_NAME,
// from the downward API), so that a client sees which backend served it, and says in
// the header X-Client which client address it saw.
package main

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	pod, node := cmp.Or(os.Getenv("POD_NAME"), "pod"), cmp.Or(os.Getenv("NODE_NAME"), "node")
	addr := ":" + cmp.Or(os.Getenv("PORT"), "80")
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			w.Header().Set("X-Client", host)
		}
		fmt.Fprintf(w, "%s on %s\n", pod, node)
	})}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
