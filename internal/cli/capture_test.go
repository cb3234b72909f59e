package cli

import (
	"strings"
	"testing"
)

// TestCaptureFlagErrors: the capture flags that go together are refused apart, with a message
// that says what is missing, before anything listens.
func TestCaptureFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "--dns-upstream", "10.0.0.53:53"}, "--dns-upstream goes with --dns-listen"},
		{[]string{"proxy", "--dns-listen", "127.0.0.1:0", "--dns-upstream", "resolver"}, `--dns-upstream "resolver": want HOST:PORT`},
		{[]string{"proxy", "--broker", "broker:8080"}, "--broker goes with --ticket"},
		{[]string{"proxy", "--ticket", "t.json", "--dns-listen", "127.0.0.1:0"}, "needs --dns-upstream"},
		{[]string{"firewall", "--transparent", "--proxy-port", "15001"}, "--transparent needs --allow-uid"},
		{[]string{"firewall", "--transparent", "--allow-uid", "65532"}, "--transparent needs --proxy-port"},
		{[]string{"firewall", "--proxy", "127.0.0.1:8080", "--proxy-port", "15001"}, "go with --transparent"},
		{[]string{"firewall", "--proxy", "127.0.0.1:8080", "--capture-route"}, "--capture-route go with --transparent"},
		{[]string{"firewall", "--transparent", "--proxy-port", "15001", "--allow-uid", "65532", "--capture-route"}, "use it with --apply"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := runAgentCmd(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q (output %q)", err, tt.want, out)
			}
		})
	}
}
