package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/swarm-proxy/swarm-proxy/internal/inspect"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create the CA that HTTPS inspection signs with, and trust bundles for agents",
		Long: `HTTPS inspection (a policy rule with http, access or inspect) terminates the agent's TLS with a
certificate minted for the host and signed by this CA; agents trust it through the variables of
"swarm-proxy env --ca". See docs/inspection.md.`,
		Args: noArgs,
	}
	cmd.AddCommand(newCAInitCmd(), newCABundleCmd())
	return cmd
}

func newCAInitCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Create an ECDSA P-256 CA valid for one year: DIR/ca.pem and DIR/ca-key.pem (mode 0600)",
		Long: `Create the inspection CA: DIR/ca.pem (the certificate agents trust) and DIR/ca-key.pem (its private
key, mode 0600, for the proxy's --ca-key only). The CA is ECDSA P-256, valid for one year, and named
for swarm-proxy and this host. Existing files are never overwritten. Prints the certificate's SHA-256
fingerprint, to compare with what agents are given.`,
		Example: `  swarm-proxy ca init --dir /etc/swarm-proxy/ca`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("ca init: --dir is required")
			}
			host, err := os.Hostname()
			if err != nil {
				host = ""
			}
			ca, err := inspect.CreateCA(dir, host, time.Now())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "wrote %s (certificate) and %s (private key, mode 0600)\n",
				filepath.Join(dir, inspect.CertFile), filepath.Join(dir, inspect.KeyFile))
			fmt.Fprintf(w, "subject: %s\n", ca.Cert.Subject.CommonName)
			fmt.Fprintf(w, "valid until: %s\n", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "SHA-256 fingerprint: %s\n", ca.Fingerprint())
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for ca.pem and ca-key.pem (created 0700 when missing)")
	return cmd
}

func newCABundleCmd() *cobra.Command {
	var caFile, out, roots string
	cmd := &cobra.Command{
		Use:   "bundle --ca CA.pem --out FILE",
		Short: "Write the system roots plus the CA to FILE, for tools that take one bundle file",
		Long: `Write FILE: the system's trusted roots (from SSL_CERT_FILE, else the distribution's bundle, or
--roots) followed by the inspection CA. Tools that replace the system roots with one file
(SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, GIT_SSL_CAINFO, PIP_CERT, AWS_CA_BUNDLE,
CARGO_HTTP_CAINFO) then trust both the hosts they trusted before and the inspected ones.`,
		Example: `  swarm-proxy ca bundle --ca /etc/swarm-proxy/ca/ca.pem --out /etc/swarm-proxy/ca/ca-bundle.pem`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if caFile == "" {
				errs = append(errs, errors.New("ca bundle: --ca is required"))
			}
			if out == "" {
				errs = append(errs, errors.New("ca bundle: --out is required"))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			caPEM, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("ca bundle: %w", err)
			}
			var system []byte
			from := roots
			if roots != "" {
				if system, err = os.ReadFile(roots); err != nil {
					return fmt.Errorf("ca bundle: --roots: %w", err)
				}
			} else if system, from, err = inspect.SystemBundle(); err != nil {
				return fmt.Errorf("ca bundle: %w", err)
			}
			b, err := inspect.Bundle(system, caPEM)
			if err != nil {
				return err
			}
			if err := writeFileAtomic(out, b); err != nil {
				return fmt.Errorf("ca bundle: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: the roots of %s and the CA %s\n", out, from, caFile)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&caFile, "ca", "", "the CA certificate (ca.pem from ca init)")
	f.StringVar(&out, "out", "", "the bundle to write")
	f.StringVar(&roots, "roots", "", "system roots to start from (default: $SSL_CERT_FILE or the distribution's bundle)")
	return cmd
}
