//go:build e2e

// The harness is tested with the e2e tests it serves (go test -tags e2e, make test).

package systemdtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// installStage02 puts stage 02's units in m, listening on a free port.
func installStage02(t *testing.T, m *Manager) (addr string) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	bin := BuildStage(t, "02-socket-activated")
	require.NoError(t, m.InstallStage("02-socket-activated", bin, addr, "-flag-for-test"))
	return addr
}

func TestUnitsAreCommittedPlusADropIn(t *testing.T) {
	t.Parallel()
	m := New(t)
	addr := installStage02(t, m)

	committed, err := os.ReadFile(filepath.Join(ModuleRoot(t), "units/02-socket-activated/dice.socket"))
	require.NoError(t, err)
	socket := m.MustSystemctl(t, "cat", "dice.socket")
	assert.Contains(t, socket, string(committed), "the unit file as committed")
	assert.Contains(t, socket, "[Socket]\nListenStream=\nListenStream="+addr+"\n")
	service := m.MustSystemctl(t, "cat", "dice.service")
	assert.Contains(t, service, "/02-socket-activated -flag-for-test\n")
	assert.Equal(t, addr, m.Show(t, "dice.socket", "Listen")[:len(addr)],
		"the drop-in's address replaces the committed one")
}

func TestManagersKeepApartAndLeaveNothing(t *testing.T) {
	t.Parallel()
	// Stage tests run in parallel, each with a manager whose units have the same names.
	pids, states := make([]int, 2), make([]string, 2)
	manager := func(i int) func(t *testing.T) {
		return func(t *testing.T) {
			m := New(t)
			installStage02(t, m)
			m.MustSystemctl(t, "start", "dice.socket")
			m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
			pids[i], states[i] = m.Pid(), m.state
			cgroup, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", m.Pid()))
			require.NoError(t, err)
			assert.Contains(t, string(cgroup), fmt.Sprintf("/socket-dice-%d/", m.Pid()),
				"the manager runs in a cgroup of its own")
		}
	}
	Subtests(t, map[string]func(*testing.T){"manager 1": manager(0), "manager 2": manager(1)})
	assert.NotEqual(t, pids[0], pids[1])
	for i, pid := range pids {
		require.Positive(t, pid, "manager %d started", i+1)
		// A zombie has exited: only its parent has not reaped it yet.
		assert.Contains(t, []byte{0, 'Z'}, ProcessState(pid), "manager %d still runs", pid)
		assert.NoDirExists(t, states[i])
	}
}

type verdict struct {
	testing.TB
	skipped, failed string
}

func (v *verdict) Helper()           {}
func (v *verdict) Skip(args ...any)  { v.skipped = fmt.Sprint(args...) }
func (v *verdict) Fatal(args ...any) { v.failed = fmt.Sprint(args...) }

func TestSkipOrFailSkipsUnlessRequired(t *testing.T) {
	tests := []struct {
		name, require string
		skips         bool
	}{
		{name: "not required", require: "", skips: true},
		{name: "required", require: "1", skips: false},
		{name: "other value", require: "yes", skips: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("DICE_REQUIRE_SYSTEMD", tt.require)
			v := &verdict{TB: t}
			SkipOrFail(v, "no real systemd user manager: no unshare here")
			if tt.skips {
				assert.Equal(t, "no real systemd user manager: no unshare here", v.skipped)
				assert.Empty(t, v.failed)
			} else {
				assert.True(t, strings.HasPrefix(v.failed,
					"no real systemd user manager: no unshare here"), v.failed)
				assert.Contains(t, v.failed, "DICE_REQUIRE_SYSTEMD=1")
				assert.Empty(t, v.skipped)
			}
		})
	}
}

// TestStageQueries: which units start a stage and which programs it runs, as
// scripts/run-stage answers for everyone.
func TestStageQueries(t *testing.T) {
	t.Parallel()
	top := ModuleRoot(t)
	for _, tt := range []struct{ stage, units, programs string }{
		{"01-always-on", "dice.service", "dice.service 01-always-on -addr 127.0.0.1:8080"},
		{"04-accept-yes", "dice.socket", "dice@.service 04-accept-yes"},
		{"05-socket-proxyd", "dice.socket", "dice-backend.service 01-always-on -addr 127.0.0.1:${PORT}"},
	} {
		t.Run(tt.stage, func(t *testing.T) {
			t.Parallel()
			units, err := Query(top, "--units", tt.stage)
			require.NoError(t, err)
			assert.Equal(t, []string{tt.units}, units)
			programs, err := Query(top, "--programs", tt.stage)
			require.NoError(t, err)
			assert.Equal(t, []string{tt.programs}, programs)
		})
	}
	_, err := Query(top, "--units", "no-such-stage")
	assert.Error(t, err)
}

// TestPortIsNoEphemeralPort: Port's ports lie below the kernel's ephemeral ports, so
// that no client connection can take one before a socket unit listens there.
func TestPortIsNoEphemeralPort(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	require.NoError(t, err)
	var low int
	_, err = fmt.Sscan(string(data), &low)
	require.NoError(t, err)
	for range 50 {
		port := FreePort(t)
		assert.GreaterOrEqual(t, port, 10000)
		assert.Less(t, port, low, "an ephemeral port")
	}
}
