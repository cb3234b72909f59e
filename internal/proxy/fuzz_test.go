package proxy

import (
	"encoding/base64"
	"strings"
	"testing"
)

func FuzzProxyCredentials(f *testing.F) {
	for _, s := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("s1:tok")), "Basic !!!", "Bearer x", "basic  " + base64.StdEncoding.EncodeToString([]byte("nocolon"))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		user, pass, err := proxyCredentials(h)
		if err != nil {
			if user != "" || pass != "" {
				t.Fatal("credentials returned with an error")
			}
			return
		}
		if strings.Contains(user, ":") {
			t.Fatalf("user %q contains the separator", user)
		}
	})
}
