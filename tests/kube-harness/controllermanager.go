package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/component-base/cli"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func runControllerManager(args []string) int {
	fs := flag.NewFlagSet("kube-harness controller-manager", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "admin kubeconfig written by `kube-harness apiserver` (default DIR/kubeconfig)")
	dir := fs.String("dir", "", "the apiserver's --dir: service-account key, CAs (required)")
	_ = fs.Parse(args)
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "kube-harness controller-manager: --dir is required")
		return 2
	}
	if *kubeconfig == "" {
		*kubeconfig = filepath.Join(*dir, kubeconfigFile)
	}
	for _, f := range []string{saKey, caCert, clientCACert, clientCAKey} {
		if _, err := readFile(*dir, f); err != nil {
			fmt.Fprintf(os.Stderr, "kube-harness controller-manager: %v\n", err)
			return 2
		}
	}

	// kube-controller-manager only handles signals itself behind a feature
	// gate and holds no state worth a graceful stop: on a signal or the
	// parent's death, flush the logs and exit.
	ctx := shutdownContext(5 * time.Second)
	go func() {
		<-ctx.Done()
		klog.Flush()
		os.Exit(0)
	}()

	p := func(name string) string { return filepath.Join(*dir, name) }
	flags := []string{
		"--kubeconfig=" + *kubeconfig,
		"--leader-elect=false",
		"--controllers=*",
		"--service-account-private-key-file=" + p(saKey),
		"--root-ca-file=" + p(caCert),
		"--use-service-account-credentials=false",
		// No serving endpoint (healthz/metrics): nothing to bind, no
		// delegated authentication round trips to the apiserver.
		"--secure-port=0",
		"--cluster-name=kube-harness",
		// CSRs for kubernetes.io/kube-apiserver-client (and the kubelet
		// signers) get signed by the CA the apiserver trusts for clients.
		"--cluster-signing-cert-file=" + p(clientCACert),
		"--cluster-signing-key-file=" + p(clientCAKey),
		// The default (/usr/libexec/kubernetes/...) would be created on
		// the host.
		"--flex-volume-plugin-dir=" + p("flexvolume"),
	}
	flags = append(flags, fs.Args()...)

	cmd := app.NewControllerManagerCommand()
	cmd.SetArgs(flags)
	klog.InfoS("kube-harness: starting kube-controller-manager", "flags", flags)
	return cli.Run(cmd)
}
