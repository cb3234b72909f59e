package doctor

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// procStatus returns a ReadProcStatus that gives a status file with CapEff eff.
func procStatus(eff string) func() ([]byte, error) {
	return func() ([]byte, error) {
		return []byte("Name:\tswarm-proxy\nCapInh:\t0000000000000000\nCapPrm:\t" + eff + "\nCapEff:\t" + eff + "\nCapBnd:\t000001ffffffffff\n"), nil
	}
}

func TestCheckCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name   string
		read   func() ([]byte, error)
		status Status
		want   []string
	}{
		{"none", procStatus("0000000000000000"), OK, []string{"neither CAP_NET_RAW nor CAP_NET_ADMIN"}},
		{"docker default", procStatus("00000000a80425fb"), Fail, []string{"CAP_NET_RAW (raw packets", "cap-drop ALL", "capabilities.drop: [ALL]"}},
		{"net admin only", procStatus("0000000000001000"), Fail, []string{"CAP_NET_ADMIN (it can change"}},
		{"root", procStatus("000001ffffffffff"), Fail, []string{"CAP_NET_RAW", "and CAP_NET_ADMIN"}},
		{"other caps", procStatus("00000000000000ff"), OK, nil},
		{"no CapEff", func() ([]byte, error) { return []byte("Name:\tx\n"), nil }, Warn, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []Result
			checkCapabilities(Config{ReadProcStatus: tc.read}, func(r Result) { got = append(got, r) })
			if len(got) != 1 || got[0].Status != tc.status {
				t.Fatalf("results %+v, want one %s", got, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(got[0].String(), w) {
					t.Errorf("%q lacks %q", got[0].String(), w)
				}
			}
		})
	}
	var got []Result
	checkCapabilities(Config{ReadProcStatus: func() ([]byte, error) { return nil, os.ErrNotExist }}, func(r Result) { got = append(got, r) })
	if len(got) != 0 {
		t.Errorf("without /proc/self/status: %+v, want nothing", got)
	}
	// The real file, on Linux: the check reads it and says something.
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		if _, ok := capEff(data); !ok {
			t.Errorf("no CapEff in the real /proc/self/status")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}
