package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apiserver/pkg/server/flagz"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	cliflag "k8s.io/component-base/cli/flag"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func runAPIServer(args []string) int {
	fs := flag.NewFlagSet("kube-harness apiserver", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory: PKI, etcd data, kubeconfig, ready (required)")
	port := fs.Int("port", 0, "secure port on 127.0.0.1 (0: a free one)")
	_ = fs.Parse(args)
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "kube-harness apiserver: --dir is required")
		return 2
	}
	logs.InitLogs()
	defer logs.FlushLogs()
	if err := apiserver(*dir, *port, fs.Args()); err != nil {
		klog.ErrorS(err, "kube-harness apiserver failed")
		return 1
	}
	return 0
}

func apiserver(dir string, port int, extra []string) error {
	started := time.Now()
	ctx := shutdownContext(30 * time.Second)

	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, readyFile))
	if err := ensurePKI(dir); err != nil {
		return fmt.Errorf("generating PKI: %w", err)
	}

	// Bind the secure port ourselves and hand the listener over: no race
	// between choosing a free port and the apiserver binding it.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("binding the secure port: %w", err)
	}
	port = ln.Addr().(*net.TCPAddr).Port
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", port)

	if err := writeKubeconfig(dir, serverURL); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dir, etcdDir))
	if err != nil {
		return fmt.Errorf("starting embedded etcd: %w", err)
	}
	defer func() {
		etcd.Close()
		klog.InfoS("kube-harness: etcd stopped")
	}()
	klog.InfoS("kube-harness: etcd ready", "url", etcdURL, "after", time.Since(started))

	p := func(name string) string { return filepath.Join(dir, name) }
	flags := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + p("pki"),
		"--tls-cert-file=" + p(servingCert),
		"--tls-private-key-file=" + p(servingKey),
		"--etcd-servers=" + etcdURL,
		"--client-ca-file=" + p(clientCACert),
		"--token-auth-file=" + p(tokenFile),
		"--service-account-issuer=" + serviceAccountIss,
		"--service-account-key-file=" + p(saPub),
		"--service-account-signing-key-file=" + p(saKey),
		"--api-audiences=" + serviceAccountIss,
		"--authorization-mode=Node,RBAC",
		"--endpoint-reconciler-type=none",
		"--enable-aggregator-routing=true",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--requestheader-client-ca-file=" + p(frontProxyCACert),
		"--requestheader-allowed-names=" + frontProxyCN,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-uid-headers=X-Remote-Uid",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p(frontProxyCert),
		"--proxy-client-key-file=" + p(frontProxyKey),
	}
	flags = append(flags, extra...)

	s := options.NewServerRunOptions()
	pfs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	pfs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	named := s.Flags()
	for _, f := range named.FlagSets {
		pfs.AddFlagSet(f)
	}
	s.Flagz = flagz.NamedFlagSetsReader{FlagSets: named}
	if err := pfs.Parse(flags); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = port

	// What app.NewAPIServerCommand's PersistentPreRunE and RunE do, minus
	// its signal handling (ours also watches the parent) and the listener.
	registry := s.GenericServerRunOptions.ComponentGlobalsRegistry
	if err := registry.Set(); err != nil {
		return err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	featureGate := registry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	registry.AddMetrics()

	go waitReady(ctx, dir, serverURL, started)

	klog.InfoS("kube-harness: starting kube-apiserver", "url", serverURL, "flags", flags)
	runErr := app.Run(ctx, completed)
	if ctx.Err() != nil {
		// Shutting down on request: the server's own error, if any, is noise.
		if runErr != nil {
			klog.InfoS("kube-harness: kube-apiserver stopped", "err", runErr)
		}
		return nil
	}
	if runErr == nil {
		runErr = errors.New("kube-apiserver returned without being asked to stop")
	}
	return runErr
}

func startEtcd(dataDir string) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kube-harness"
	cfg.Dir = dataDir
	loopback0 := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{loopback0}
	cfg.AdvertiseClientUrls = []url.URL{loopback0}
	cfg.ListenPeerUrls = []url.URL{loopback0}
	cfg.AdvertisePeerUrls = []url.URL{loopback0}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	// A test cluster: losing the last writes on a crash does not matter, and
	// fsync on a busy CI machine makes every write slow.
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, "", errors.New("etcd not ready after 60s")
	}
	return e, "http://" + e.Clients[0].Addr().String(), nil
}

func writeKubeconfig(dir, serverURL string) error {
	ca, err := readFile(dir, caCert)
	if err != nil {
		return err
	}
	cert, err := readFile(dir, adminCert)
	if err != nil {
		return err
	}
	key, err := readFile(dir, adminKey)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["harness"] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["harness"] = &clientcmdapi.Context{Cluster: "harness", AuthInfo: "admin"}
	cfg.CurrentContext = "harness"
	return clientcmd.WriteToFile(*cfg, filepath.Join(dir, kubeconfigFile))
}

// waitReady polls /readyz as the admin and then writes DIR/ready, atomically.
func waitReady(ctx context.Context, dir, serverURL string, started time.Time) {
	ca, err := readFile(dir, caCert)
	if err != nil {
		klog.ErrorS(err, "kube-harness: readiness probe")
		return
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, adminCert), filepath.Join(dir, adminKey))
	if err != nil {
		klog.ErrorS(err, "kube-harness: readiness probe")
		return
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
			DisableKeepAlives: true,
		},
	}
	for ctx.Err() == nil {
		resp, err := client.Get(serverURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				tmp := filepath.Join(dir, readyFile+".tmp")
				if err := os.WriteFile(tmp, []byte(serverURL), 0o644); err != nil {
					klog.ErrorS(err, "kube-harness: writing ready file")
					return
				}
				if err := os.Rename(tmp, filepath.Join(dir, readyFile)); err != nil {
					klog.ErrorS(err, "kube-harness: writing ready file")
					return
				}
				klog.InfoS("kube-harness: kube-apiserver ready", "url", serverURL, "after", time.Since(started))
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
