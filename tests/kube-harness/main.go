// kube-harness runs the real kube-apiserver (with an embedded etcd) and the
// real kube-controller-manager from k8s.io/kubernetes, on loopback, for the
// end-to-end test suites. See README.md.
//
//	kube-harness apiserver --dir DIR [--port N] [-- extra kube-apiserver flags]
//	kube-harness controller-manager --kubeconfig FILE --dir DIR [-- extra flags]
package main

import (
	_ "time/tzdata" // CronJob time zones, as in the upstream binaries

	"fmt"
	"os"

	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
)

const usage = `kube-harness: the real kube-apiserver and kube-controller-manager for tests.

usage:
  kube-harness apiserver --dir DIR [--port N] [-- extra kube-apiserver flags]
      Generates PKI under DIR (kept if already there), starts an embedded etcd
      (data in DIR/etcd) and kube-apiserver on https://127.0.0.1:N (N free if 0),
      writes DIR/kubeconfig and, once /readyz answers 200, DIR/ready (the URL).
  kube-harness controller-manager --kubeconfig FILE --dir DIR [-- extra flags]
      Runs kube-controller-manager against that apiserver (keys from DIR).

Both exit on SIGTERM/SIGINT and when their parent process dies.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "apiserver":
		os.Exit(runAPIServer(os.Args[2:]))
	case "controller-manager":
		os.Exit(runControllerManager(os.Args[2:]))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "kube-harness: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
