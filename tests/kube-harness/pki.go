package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files written under DIR by the apiserver subcommand.
const (
	caCert            = "ca.crt" // serving CA: trust this to talk to the apiserver
	caKey             = "ca.key"
	servingCert       = "apiserver.crt"
	servingKey        = "apiserver.key"
	clientCACert      = "client-ca.crt" // --client-ca-file
	clientCAKey       = "client-ca.key"
	adminCert         = "admin.crt" // CN=admin, O=system:masters
	adminKey          = "admin.key"
	adminToken        = "admin.token" // bearer token of the same admin user
	tokenFile         = "tokens.csv"  // --token-auth-file
	frontProxyCACert  = "front-proxy-ca.crt"
	frontProxyCAKey   = "front-proxy-ca.key"
	frontProxyCert    = "front-proxy-client.crt"
	frontProxyKey     = "front-proxy-client.key"
	saKey             = "sa.key" // service-account signing key (RSA, RS256)
	saPub             = "sa.pub"
	kubeconfigFile    = "kubeconfig"
	readyFile         = "ready"
	etcdDir           = "etcd"
	frontProxyCN      = "front-proxy-client"
	serviceAccountIss = "https://kubernetes.default.svc.cluster.local"
)

type keyPair struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

func newECKey() (crypto.Signer, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

// issue signs a certificate from tmpl with parent (self-signed when parent is nil).
func issue(tmpl *x509.Certificate, parent *keyPair) (*keyPair, error) {
	key, keyPEM, err := newECKey()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  keyPEM,
	}, nil
}

func newCA(cn string) (*keyPair, error) {
	return issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil)
}

func newClientCert(ca *keyPair, cn string, orgs ...string) (*keyPair, error) {
	return issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		NotAfter:    time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca)
}

func newServingCert(ca *keyPair) (*keyPair, error) {
	return issue(&x509.Certificate{
		Subject:  pkix.Name{CommonName: "kube-apiserver"},
		NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{
			x509.ExtKeyUsageServerAuth,
		},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.96.0.1")},
	}, ca)
}

func writeFiles(dir string, files map[string][]byte) error {
	for name, data := range files {
		mode := os.FileMode(0o644)
		if filepath.Ext(name) == ".key" || name == tokenFile || name == adminToken {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, mode); err != nil {
			return err
		}
	}
	return nil
}

// ensurePKI writes every certificate, key and token the apiserver and the
// controller-manager need, unless DIR already holds a complete set (a restart
// on the same DIR keeps its credentials).
func ensurePKI(dir string) error {
	all := []string{caCert, caKey, servingCert, servingKey, clientCACert, clientCAKey, adminCert,
		adminKey, adminToken, tokenFile, frontProxyCACert, frontProxyCAKey, frontProxyCert,
		frontProxyKey, saKey, saPub}
	complete := true
	for _, f := range all {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			complete = false
			break
		}
	}
	if complete {
		return nil
	}

	ca, err := newCA("kube-harness-ca")
	if err != nil {
		return err
	}
	serving, err := newServingCert(ca)
	if err != nil {
		return err
	}
	clientCA, err := newCA("kube-harness-client-ca")
	if err != nil {
		return err
	}
	admin, err := newClientCert(clientCA, "admin", "system:masters")
	if err != nil {
		return err
	}
	fpCA, err := newCA("kube-harness-front-proxy-ca")
	if err != nil {
		return err
	}
	fp, err := newClientCert(fpCA, frontProxyCN)
	if err != nil {
		return err
	}

	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}

	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	token := hex.EncodeToString(tok)

	return writeFiles(dir, map[string][]byte{
		caCert:           ca.certPEM,
		caKey:            ca.keyPEM,
		servingCert:      append(append([]byte{}, serving.certPEM...), ca.certPEM...),
		servingKey:       serving.keyPEM,
		clientCACert:     clientCA.certPEM,
		clientCAKey:      clientCA.keyPEM,
		adminCert:        admin.certPEM,
		adminKey:         admin.keyPEM,
		adminToken:       []byte(token),
		tokenFile:        []byte(fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", token)),
		frontProxyCACert: fpCA.certPEM,
		frontProxyCAKey:  fpCA.keyPEM,
		frontProxyCert:   fp.certPEM,
		frontProxyKey:    fp.keyPEM,
		saKey:            pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sa)}),
		saPub:            pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}),
	})
}

func readFile(dir, name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: missing (was the apiserver started with --dir %s?)", name, dir)
	}
	return b, err
}
