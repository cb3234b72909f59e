package accesslog_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/swarm-proxy/swarm-proxy/internal/accesslog"
	"github.com/swarm-proxy/swarm-proxy/internal/dial"
	"github.com/swarm-proxy/swarm-proxy/internal/policy"
	"github.com/swarm-proxy/swarm-proxy/internal/secrets"
)

// TestREADMEListsEveryErrorKind: the README's row for the error field names exactly the kinds of
// accesslog.ErrorKinds, and the kinds other packages put in that field are among them.
func TestREADMEListsEveryErrorKind(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for line := range strings.Lines(string(readme)) {
		if strings.HasPrefix(line, "| `"+accesslog.FieldError+"` |") {
			row = line
		}
	}
	if row == "" {
		t.Fatal("README has no row for the error field")
	}
	var listed []string
	for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(row, -1) {
		if m[1] != accesslog.FieldError {
			listed = append(listed, m[1])
		}
	}
	for _, k := range accesslog.ErrorKinds {
		if !slices.Contains(listed, k) {
			t.Errorf("README does not list error kind %q", k)
		}
	}
	for _, k := range listed {
		if !slices.Contains(accesslog.ErrorKinds, k) {
			t.Errorf("README lists %q, which is not in accesslog.ErrorKinds", k)
		}
	}
	// Kinds named elsewhere that reach the error field.
	others := []string{string(policy.CodeNoRule), string(policy.CodeDeniedByRule), string(policy.CodeSpecialAddr),
		secrets.CodeNotBound, secrets.CodeUnavailable}
	for k := dial.KindInternal; k <= dial.KindNoProvider; k++ {
		if k != dial.KindDenied { // a denial is logged with its policy code
			others = append(others, k.String())
		}
	}
	for _, k := range others {
		if !slices.Contains(accesslog.ErrorKinds, k) {
			t.Errorf("kind %q is logged but is not in accesslog.ErrorKinds", k)
		}
	}
}
