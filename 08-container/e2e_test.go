//go:build e2e

// Package container is stage 08: stage 03's program, unchanged, in a podman container
// that dice.socket starts on the first connection and that is gone once idle. It has
// no Go of its own; its tests run units/08-container under a real systemd user
// manager of their own (package systemdtest), on a free port instead of 8080, with a
// shorter -idle, and podman with storage of the test's own (never the user's images
// and containers).
package container

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

// stage is a running dice.socket of stage 08 under a private manager.
type stage struct {
	m    *systemdtest.Manager
	base string // http://127.0.0.1:port
}

// podman runs podman with the test's storage and returns its trimmed output.
func podman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("podman", args...).CombinedOutput()
	require.NoError(t, err, "podman %s:\n%s", strings.Join(args, " "), out)
	return strings.TrimSpace(string(out))
}

// startStage gives podman storage of the test's own, builds the image from stage 03's
// program (make build, then make image), installs the stage's units under a
// private systemd user manager with -idle idle, and starts dice.socket only.
func startStage(t *testing.T, idle string) *stage {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no tests under a real systemd")
	}
	if os.Getuid() != 0 {
		// Not a skip that DICE_REQUIRE_SYSTEMD=1 turns into a failure: the private manager
		// of a user runs as root of a user namespace mapping that user only, where podman
		// takes itself for root and cannot be. CI runs this as root; make test-distros
		// runs the stage rootless in a real login session.
		t.Skip("stage 08 under a test's private manager needs root; as a user, rootless " +
			"podman needs a login session: make run-stage 8 (make test-distros checks it)")
	}
	if _, err := exec.LookPath("podman"); err != nil {
		systemdtest.SkipOrFail(t, "podman is not installed (apt-get install podman crun uidmap)")
	}
	env, err := systemdtest.PodmanEnv(t.TempDir())
	require.NoError(t, err)
	// Set before the manager starts: it passes them on to dice.service.
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		t.Setenv(name, value)
	}
	bin := systemdtest.BuildStage(t, "03-idle-exit")
	out, err := exec.Command("make", "-s", "-C", systemdtest.ModuleRoot(t), "image",
		"BIN="+bin).CombinedOutput()
	require.NoError(t, err, "make image:\n%s", out)
	t.Cleanup(func() { _ = exec.Command("podman", "system", "reset", "--force").Run() })

	m := systemdtest.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", systemdtest.FreePort(t))
	require.NoError(t, m.InstallStage("08-container", bin, addr, "-idle", idle))
	m.MustSystemctl(t, "start", "dice.socket")
	m.WaitProp(t, "dice.socket", "SubState", "listening", 10*time.Second)
	require.Equal(t, "inactive", m.Show(t, "dice.service", "ActiveState"),
		"nothing runs before the first connection")
	require.Empty(t, podman(t, "ps", "--all", "--quiet"), "no container before the first connection")
	return &stage{m: m, base: "http://" + addr}
}

// holdConn sends a request on a connection of its own that stays open, so that the
// container runs while the test looks at it, and returns the connection (closed at
// the test's end) and its local address.
func (s *stage) holdConn(t *testing.T) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	pids := dicetest.KeepAliveRolls(t, c, 1)
	assert.Equal(t, []string{"1"}, pids, "the program is PID 1 of the container's own pid namespace")
	return c, c.LocalAddr().String()
}

// gone waits until the service has exited after its idle time, and checks that it
// ended cleanly and left no container behind.
func (s *stage) gone(t *testing.T) {
	t.Helper()
	s.m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
	assert.Equal(t, "success", s.m.Show(t, "dice.service", "Result"))
	assert.Equal(t, "0", s.m.Show(t, "dice.service", "ExecMainStatus"))
	assert.Empty(t, podman(t, "ps", "--all", "--quiet"), "no container is left")
	assert.Equal(t, "listening", s.m.Show(t, "dice.socket", "SubState"))
}

// TestContainerExistsOnlyWhileCalled proves the stage's promise: the first
// connection starts a container, which answers through the passed socket and sees
// the client's own address; -idle after the last connection it is gone, container
// and process; the next connection starts a new one.
func TestContainerExistsOnlyWhileCalled(t *testing.T) {
	s := startStage(t, "300ms")
	c, local := s.holdConn(t)
	first := podman(t, "ps", "--quiet", "--no-trunc")
	require.NotEmpty(t, first, "a container runs")
	assert.Equal(t, "active", s.m.Show(t, "dice.service", "ActiveState"),
		"the program's READY=1 reached systemd (Type=notify)")
	// The log line of the request names the client's own address and port: the
	// socket was opened in the host's network and passed in, nothing translated it.
	assert.Contains(t, s.m.Log(), "remote="+local, "the program's log line of our request")

	require.NoError(t, c.Close())
	s.gone(t)
	_, err := dicetest.TryRoll(dicetest.NewConn, s.base)
	require.NoError(t, err, "the next connection starts a new container")
	assert.NotEqual(t, first, podman(t, "ps", "--all", "--quiet", "--no-trunc"), "a new container")
	s.gone(t)
}

// TestInsideTheContainer proves what the program is given: the socket as fd 3, with
// LISTEN_PID=1, its own pid in the container, so go-systemd's check passes; no
// network interface but a loopback (--network=none), yet it serves, through the
// passed socket only; and it runs as nobody.
func TestInsideTheContainer(t *testing.T) {
	s := startStage(t, "300ms")
	s.holdConn(t)
	pid := podman(t, "inspect", "--format", "{{.State.Pid}}", "systemd-dice")
	env, err := os.ReadFile("/proc/" + pid + "/environ")
	require.NoError(t, err)
	vars := strings.Split(string(env), "\x00")
	assert.Contains(t, vars, "LISTEN_FDS=1")
	assert.Contains(t, vars, "LISTEN_PID=1")

	netDev, err := os.ReadFile("/proc/" + pid + "/net/dev")
	require.NoError(t, err)
	var ifaces []string
	for _, line := range strings.Split(string(netDev), "\n")[2:] {
		if name, _, ok := strings.Cut(line, ":"); ok {
			ifaces = append(ifaces, strings.TrimSpace(name))
		}
	}
	assert.Equal(t, []string{"lo"}, ifaces, "the container's network interfaces")

	status, err := os.ReadFile("/proc/" + pid + "/status")
	require.NoError(t, err)
	assert.Regexp(t, `(?m)^Uid:\s+65534\s`, string(status), "the program runs as nobody")
	assert.Regexp(t, `(?m)^CapEff:\s+0+$`, string(status), "with no capability")
}

// TestFirstRequestsAfterIdle proves that a request that finds no container is
// answered, over and over: rounds times a request on a new connection, each time
// after the previous container has exited idle, so that each one starts a new
// container. Not one may fail.
func TestFirstRequestsAfterIdle(t *testing.T) {
	const rounds, idle = 50, "200ms"
	s := startStage(t, idle)
	var failed []error
	start := time.Now()
	for i := range rounds {
		if _, err := dicetest.TryRoll(dicetest.NewConn, s.base); err != nil {
			failed = append(failed, fmt.Errorf("round %d: %w", i, err))
		}
		s.m.WaitProp(t, "dice.service", "ActiveState", "inactive", 30*time.Second)
	}
	t.Logf("%d first requests after an idle exit (-idle %s) in %s", rounds, idle,
		time.Since(start).Round(time.Millisecond))
	assert.Empty(t, failed, "failed first requests")
	s.gone(t)
}
