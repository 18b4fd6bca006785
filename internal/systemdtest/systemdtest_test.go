package systemdtest

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// client does not wait forever for a service that hangs.
var client = &http.Client{Timeout: 10 * time.Second}

// markers makes the command lines of the sleepers unique, so that `ps` finds ours.
var markers atomic.Int64

// installSleeper installs testdata/units/sleeper with a marker argument of its own
// (sleep adds up its arguments) and returns the marker.
func installSleeper(t *testing.T, m *Manager) string {
	t.Helper()
	marker := fmt.Sprint(4_000_000 + os.Getpid()*100 + int(markers.Add(1)))
	m.InstallUnits(t, Install{Dir: "testdata/units/sleeper", Args: []string{marker}})
	return marker
}

func TestStartAndStopAService(t *testing.T) {
	t.Parallel()
	m := New(t)
	marker := installSleeper(t, m)

	m.MustSystemctl(t, "start", "sleeper.service")
	m.WaitProp(t, "sleeper.service", "ActiveState", "active", 5*time.Second)
	pid := m.MainPID(t, "sleeper.service")
	require.Positive(t, pid)
	assert.True(t, alive(pid), "MainPID %d does not exist", pid)
	assert.Equal(t, "/bin/sleep 1000 "+marker, cmdline(pid))
	cgroup, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	require.NoError(t, err)
	assert.Contains(t, string(cgroup),
		fmt.Sprintf("/socket-dice-%d/app.slice/sleeper.service", m.Pid()),
		"the service runs in the private manager's own cgroup")
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	require.NoError(t, err)
	assert.Contains(t, string(environ), "XDG_RUNTIME_DIR="+m.RuntimeDir()+"\x00",
		"services inherit the manager's XDG_RUNTIME_DIR, which cleanup looks for")

	m.MustSystemctl(t, "stop", "sleeper.service")
	assert.Equal(t, "inactive", m.Show(t, "sleeper.service", "ActiveState"))
	assert.Zero(t, m.MainPID(t, "sleeper.service"))
	assert.False(t, alive(pid), "process %d outlived systemctl stop", pid)
}

func TestSocketActivation(t *testing.T) {
	t.Parallel()
	m := New(t)
	binary := BuildStage(t, "internal/systemdtest/testdata/hello")
	port := FreePort(t)
	units := m.InstallUnits(t, Install{
		Dir:    "testdata/units/hello",
		Binary: binary,
		Args:   []string{"-greeting", "hi there"},
		Port:   port,
		Edit: func(name, content string) string {
			return content + "# edited: " + name + "\n"
		},
	})
	require.Equal(t, []string{"hello.service", "hello.socket"}, units)

	socket, err := os.ReadFile(filepath.Join(m.UnitDir(), "hello.socket"))
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(socket), "ListenStream="), "%s", socket)
	assert.Contains(t, string(socket), fmt.Sprintf("ListenStream=127.0.0.1:%d\n", port))
	assert.Contains(t, string(socket), "# edited: hello.socket\n")
	service, err := os.ReadFile(filepath.Join(m.UnitDir(), "hello.service"))
	require.NoError(t, err)
	assert.Contains(t, string(service),
		"ExecStart="+binary+` -greeting hi -greeting "hi there"`+"\n")

	m.MustSystemctl(t, "start", "hello.socket")
	m.WaitProp(t, "hello.socket", "ActiveState", "active", 5*time.Second)
	assert.Equal(t, "inactive", m.Show(t, "hello.service", "ActiveState"),
		"the service waits for the first connection")

	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	pid := m.MainPID(t, "hello.service")
	assert.Equal(t, fmt.Sprintf("hi there from %d\n", pid), string(body))

	log := m.Log()
	assert.Contains(t, log, fmt.Sprintf("hello: serving 127.0.0.1:%d", port),
		"service output reaches the log")
	assert.Contains(t, log, "Started hello.service", "the manager's messages reach the log")
}

func TestHardenedService(t *testing.T) {
	t.Parallel()
	m := New(t)
	binary := BuildStage(t, "internal/systemdtest/testdata/hello")
	port := FreePort(t)
	// PrivateTmp= hides the binary's directory and ProtectHome= needs the manager's
	// "inaccessible" nodes: both are the helper's business, not the unit's.
	hardening := "PrivateTmp=yes\nProtectHome=yes\nProtectSystem=strict\nPrivateNetwork=yes\n"
	if os.Geteuid() == 0 {
		// A private manager in a user namespace maps one uid only: no dynamic users.
		hardening += "DynamicUser=yes\n"
	}
	m.InstallUnits(t, Install{
		Dir:    "testdata/units/hello",
		Binary: binary,
		Port:   port,
		Edit: func(name, content string) string {
			return strings.Replace(content, "[Service]\n", "[Service]\n"+hardening, 1)
		},
	})
	m.MustSystemctl(t, "start", "hello.socket")

	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("hi from %d\n", m.MainPID(t, "hello.service")), string(body))
}

func TestCleanupLeavesNothing(t *testing.T) {
	t.Parallel()
	var state, marker string
	var managerPid, pid int
	var cgroups []string
	t.Run("manager", func(t *testing.T) {
		m := New(t)
		marker = installSleeper(t, m)
		m.MustSystemctl(t, "start", "sleeper.service")
		state, managerPid, pid = m.state, m.Pid(), m.MainPID(t, "sleeper.service")
		data, err := os.ReadFile(filepath.Join(m.state, "cgroups"))
		require.NoError(t, err)
		cgroups = strings.Fields(string(data))
		require.NotEmpty(t, cgroups)
		for _, dir := range cgroups {
			require.DirExists(t, dir)
		}
	})
	if pid == 0 {
		t.Skip("no manager, see the subtest")
	}

	assert.False(t, alive(managerPid), "the manager %d is still running", managerPid)
	assert.False(t, alive(pid), "the service %d is still running", pid)
	assert.NoDirExists(t, state)
	for _, dir := range cgroups {
		assert.NoDirExists(t, dir)
	}
	ps, err := exec.Command("ps", "-eo", "pid,args").Output()
	require.NoError(t, err)
	assert.NotContains(t, string(ps), marker)
}

func TestManagersKeepApart(t *testing.T) {
	t.Parallel()
	// Stage tests run in parallel, each with a manager whose units have the same names.
	a, b := New(t), New(t)
	installSleeper(t, a)
	installSleeper(t, b)
	a.MustSystemctl(t, "start", "sleeper.service")
	b.MustSystemctl(t, "start", "sleeper.service")
	pidA, pidB := a.MainPID(t, "sleeper.service"), b.MainPID(t, "sleeper.service")
	require.NotEqual(t, pidA, pidB)

	a.MustSystemctl(t, "stop", "sleeper.service")
	assert.False(t, alive(pidA))
	assert.True(t, alive(pidB), "stopping a unit in one manager killed the other's")
	assert.Equal(t, "active", b.Show(t, "sleeper.service", "ActiveState"))
}

func TestRewriteUnit(t *testing.T) {
	tests := []struct {
		name string
		in   Install
		unit string
		want string
	}{{
		name: "binary replaced, arguments kept and appended",
		in:   Install{Binary: "/tmp/b/02", Args: []string{"-addr", "127.0.0.1:1"}},
		unit: "[Service]\nExecStart=%h/bin/dice -v\n",
		want: "[Service]\nExecStart=/tmp/b/02 -v -addr 127.0.0.1:1\n",
	}, {
		name: "prefixes and spaces around = kept",
		in:   Install{Binary: "/b"},
		unit: "ExecStart = -/usr/bin/dice\n",
		want: "ExecStart=-/b\n",
	}, {
		name: "quoted program replaced",
		in:   Install{Binary: "/b"},
		unit: `ExecStart="/opt/my dice" -x` + "\n",
		want: "ExecStart=/b -x\n",
	}, {
		name: "arguments quoted for systemd",
		in:   Install{Args: []string{"a b", "50%", "$HOME", `say "hi"`}},
		unit: "ExecStart=/d\n",
		want: `ExecStart=/d "a b" 50%% $$HOME "say \"hi\""` + "\n",
	}, {
		name: "reset lines, comments and other keys untouched",
		in:   Install{Binary: "/b", Port: 9},
		unit: "ExecStart=\n# ExecStart=/x\nListenDatagram=53\nExecStartPre=/x\n",
		want: "ExecStart=\n# ExecStart=/x\nListenDatagram=53\nExecStartPre=/x\n",
	}, {
		name: "first ListenStream gets the port, the others go",
		in:   Install{Port: 4242},
		unit: "ListenStream=8080\nListenStream=[::1]:8080\nAccept=no\n",
		want: "ListenStream=127.0.0.1:4242\nAccept=no\n",
	}, {
		name: "nothing asked, nothing changed",
		unit: "ExecStart=/d -x\nListenStream=8080\n",
		want: "ExecStart=/d -x\nListenStream=8080\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, rewriteUnit(tt.unit, tt.in))
		})
	}
}

func TestBindBinary(t *testing.T) {
	bind := "# systemdtest: the private /tmp would hide the test's binary.\n" +
		"BindReadOnlyPaths=/tmp/bin\n"
	tests := []struct {
		name, unit, want string
	}{
		{
			name: "PrivateTmp",
			unit: "[Unit]\nDescription=d\n[Service]\nExecStart=/tmp/bin/d\nPrivateTmp=yes\n",
			want: "[Unit]\nDescription=d\n[Service]\n" + bind +
				"ExecStart=/tmp/bin/d\nPrivateTmp=yes\n",
		},
		{
			name: "DynamicUser implies PrivateTmp",
			unit: "[Service]\nDynamicUser = true\n",
			want: "[Service]\n" + bind + "DynamicUser = true\n",
		},
		{
			name: "PrivateTmp off",
			unit: "[Service]\nPrivateTmp=no\n",
			want: "[Service]\nPrivateTmp=no\n",
		},
		{
			name: "not a service",
			unit: "[Socket]\nListenStream=1\n",
			want: "[Socket]\nListenStream=1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, bindBinary(tt.unit, "/tmp/bin/d"))
		})
	}
}

// verdict records what unavailable decided instead of ending the test.
type verdict struct {
	testing.TB
	skipped, failed string
}

func (v *verdict) Helper()           {}
func (v *verdict) Skip(args ...any)  { v.skipped = fmt.Sprint(args...) }
func (v *verdict) Fatal(args ...any) { v.failed = fmt.Sprint(args...) }

func TestUnavailableSkipsUnlessRequired(t *testing.T) {
	tests := []struct {
		name, require  string
		skips, failure bool
	}{
		{name: "not required", require: "", skips: true},
		{name: "required", require: "1", failure: true},
		{name: "other value", require: "yes", skips: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("DICE_REQUIRE_SYSTEMD", tt.require)
			v := &verdict{TB: t}
			unavailable(v, "no %s here", "unshare")
			if tt.skips {
				assert.Equal(t, "no real systemd user manager: no unshare here", v.skipped)
				assert.Empty(t, v.failed)
			}
			if tt.failure {
				assert.Contains(t, v.failed, "no real systemd user manager: no unshare here")
				assert.Contains(t, v.failed, "DICE_REQUIRE_SYSTEMD=1")
				assert.Empty(t, v.skipped)
			}
		})
	}
}
