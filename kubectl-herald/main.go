// Command kubectl-herald is Herald's kubectl plugin: kubectl herald status|pools|explain|validate.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/inspect"
	"github.com/heraldlb/herald/pkg/k8s"
)

const usage = `kubectl herald: what Herald does with your Services

  kubectl herald status                 every Service address, its pool, mode and announcing
                                        nodes; the configuration in force and what each speaker runs
  kubectl herald pools                  each pool's capacity, use and free addresses, per family
  kubectl herald explain NAMESPACE/NAME why a Service has no address, or who announces it
  kubectl herald validate FILE          check a ConfigMap (or its config text) with the controller's
                                        own rule, and say which Services would keep, move or lose
                                        their addresses (that list needs a cluster; --offline, or no
                                        kubeconfig, checks the file alone)
  kubectl herald help                   this text

Flags (before the command): --kubeconfig, --config-namespace, --config-name, --config-key,
--load-balancer-class, -o table|json, --offline
Exit status: 0 when all is well, 1 on an error or when validate finds the file would be refused.
`

// errRefused says validate found a valid configuration the controller would refuse; the
// table already said why.
var errRefused = errors.New("the controller would refuse this configuration")

func main() {
	err := run(os.Args[1:], os.Stdout)
	var cfgErr config.Errors
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errRefused):
		os.Exit(1)
	case errors.As(err, &cfgErr):
		for _, e := range cfgErr {
			fmt.Fprintln(os.Stderr, e)
		}
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, "kubectl herald:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("kubectl-herald", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	ref := k8s.ConfigRef{}
	fs.StringVar(&ref.Namespace, "config-namespace", "herald-system", "namespace of Herald's ConfigMap")
	fs.StringVar(&ref.Name, "config-name", "config", "name of Herald's ConfigMap")
	fs.StringVar(&ref.Key, "config-key", "config", "key of the configuration in the ConfigMap")
	class := fs.String("load-balancer-class", k8s.DefaultLoadBalancerClass, "the class Herald serves besides none")
	output := fs.String("o", "table", "output: table or json")
	offline := fs.Bool("offline", false, "validate: check the file alone, without a cluster")
	fs.SetOutput(out)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 || fs.Arg(0) == "help" {
		fs.Usage()
		if fs.NArg() == 0 {
			return errors.New("no command")
		}
		return flag.ErrHelp
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	if slices.ContainsFunc(rest, func(a string) bool { return a == "-h" || a == "-help" || a == "--help" }) {
		fs.Usage()
		return flag.ErrHelp
	}
	wouldRefuse := false
	var warnings []config.Warning // validate: what the configuration asks that Herald does differently
	if !slices.Contains([]string{"status", "pools", "explain", "validate"}, cmd) {
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
	if cmd == "validate" && len(rest) != 1 {
		return errors.New("validate takes a FILE")
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if cmd == "validate" && (*offline || clientcmd.IsEmptyConfig(err)) {
		return validateOffline(out, rest[0], ref.Key)
	}
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	snap, err := inspect.Read(context.Background(), client, ref, *class)
	if err != nil {
		return err
	}
	var v any
	var header []string
	footer := ""
	var rows func() [][]string
	switch cmd {
	case "status":
		st, err := snap.Status()
		if err != nil {
			return err
		}
		v, header = st, []string{"SERVICE", "IP", "POOL", "MODE", "ANNOUNCED BY", "TO PEERS"}
		rows = func() (r [][]string) {
			for _, s := range st {
				by := strings.Join(s.Announcers, ",")
				if !s.Published && by != "" {
					by += " (elected among Ready nodes)"
				}
				r = append(r, []string{s.Service, s.IP, s.Pool, s.Mode, by, strings.Join(s.Peers, ",")})
			}
			return r
		}
		footer = configFooter(snap)
	case "pools":
		ps, err := snap.Pools()
		if err != nil {
			return err
		}
		v, header = ps, []string{"POOL", "PROTOCOL", "FAMILY", "CAPACITY", "IN USE", "FREE"}
		rows = func() (r [][]string) {
			for _, p := range ps {
				r = append(r, []string{p.Pool, p.Protocol, p.Family, p.Capacity, fmt.Sprint(p.InUse), p.Free})
			}
			return r
		}
	case "explain":
		if len(rest) != 1 || !strings.Contains(rest[0], "/") {
			return errors.New("explain takes NAMESPACE/NAME")
		}
		lines, err := snap.Explain(rest[0])
		if err != nil {
			return err
		}
		if *output == "json" {
			return json.NewEncoder(out).Encode(lines)
		}
		for _, l := range lines {
			fmt.Fprintln(out, l)
		}
		return nil
	case "validate":
		text, err := os.ReadFile(rest[0])
		if err != nil {
			return err
		}
		ch, verdict := snap.Validate(text, ref.Key)
		var refused *config.Refused
		if verdict != nil && !errors.As(verdict, &refused) {
			return verdict
		}
		wouldRefuse = refused != nil
		if cfg, err := inspect.ValidateFile(text, ref.Key); err == nil {
			warnings = cfg.Warnings
		}
		v, header = ch, []string{"SERVICE", "IPS", "POOL NOW", "POOL AFTER", "OUTCOME", "WHY"}
		rows = func() (r [][]string) {
			for _, c := range ch {
				r = append(r, []string{c.Service, c.IPs, c.Before, c.After, c.Outcome, c.Reason})
			}
			return r
		}
		footer = "\nThe configuration is valid; no Service loses its address.\n"
		if refused != nil {
			footer = "\nThe controller would refuse this configuration: " + refused.Error() + ".\n"
		}
	}
	if *output == "json" {
		// The JSON stays the table's rows; warnings go where kubectl prints its own.
		printWarnings(os.Stderr, warnings)
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return err
		}
		if wouldRefuse {
			return errRefused
		}
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows() {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := fmt.Fprint(out, footer); err != nil {
		return err
	}
	printWarnings(out, warnings)
	if wouldRefuse {
		return errRefused
	}
	return nil
}

// validateOffline checks a file with no cluster at all.
func validateOffline(out io.Writer, path, key string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cfg, err := inspect.ValidateFile(text, key)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "The configuration is valid: %d address pools, %d BGP peers.\n"+
		"Whether any Service would lose its address needs a cluster: run it with a kubeconfig.\n",
		len(cfg.Pools), len(cfg.Peers))
	printWarnings(out, cfg.Warnings)
	return err
}

// printWarnings writes each warning on a line of its own, as kubectl writes the API
// server's: "Warning: ...".
func printWarnings(w io.Writer, warnings []config.Warning) {
	for _, x := range warnings {
		fmt.Fprintln(w, "Warning:", x)
	}
}

// configFooter says which configuration is in force, whether the admin's ConfigMap is,
// which configuration each speaker runs, and the state of each speaker's BGP sessions.
func configFooter(s *inspect.Snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nConfiguration in force: %s\n", s.InForce)
	if s.Proposed != "" {
		fmt.Fprintf(&b, "The ConfigMap holds another configuration (%s), not in force: %s\n", s.Proposed, s.ProposedWhy)
	}
	for _, sp := range s.Speakers {
		switch {
		case sp.Err != "":
			fmt.Fprintf(&b, "  speaker %s on %s: cannot tell (%s)\n", sp.Pod, sp.Node, sp.Err)
		case sp.Config != s.InForce:
			fmt.Fprintf(&b, "  speaker %s on %s runs %s: it disagrees with the controller\n", sp.Pod, sp.Node, sp.Config)
		default:
			fmt.Fprintf(&b, "  speaker %s on %s runs it\n", sp.Pod, sp.Node)
		}
		for _, ses := range sp.Sessions {
			state := "down"
			if ses.Established {
				state = "established"
			}
			if ses.BFD != "" {
				state += ", BFD " + ses.BFD
			}
			fmt.Fprintf(&b, "    BGP session with %s: %s\n", ses.Peer, state)
		}
	}
	return b.String()
}
