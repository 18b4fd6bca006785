package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"example.com/socket-dice/dice"
	"example.com/socket-dice/internal/stagetest"
	"example.com/socket-dice/internal/systemdtest"
)

// TestMain lets a test run this very binary as the stage's main, flags and
// signals included (stagetest.Self).
func TestMain(m *testing.M) { stagetest.Main(m, main) }

func TestServeAnswersRolls(t *testing.T) {
	*addr = "127.0.0.1:0"
	ln, err := listener()
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, &dice.Handler{Log: log}, log) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/roll")
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, strconv.Itoa(os.Getpid()), resp.Header.Get("Dice-Pid"))
	var a dice.Answer
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&a))
	assert.GreaterOrEqual(t, a.Result, 1)
	assert.LessOrEqual(t, a.Result, 6)

	stop()
	assert.NoError(t, <-done)
}

func TestListenerRefusesABusyPort(t *testing.T) {
	*addr = "127.0.0.1:0"
	ln, err := listener()
	require.NoError(t, err)
	defer ln.Close()
	*addr = ln.Addr().String()
	_, err = listener()
	assert.ErrorContains(t, err, "address already in use")
}

// TestSIGTERMFinishesSlowRequest runs the stage as its own process, sends SIGTERM
// while a slow request is in flight, and expects the answer and exit status 0.
func TestSIGTERMFinishesSlowRequest(t *testing.T) {
	cmd := stagetest.Self("-addr", "127.0.0.1:0", "-delay", "1s")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	addr := waitForAddr(t, stderr)
	type result struct {
		status int
		pid    string
		err    error
	}
	answered := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/roll")
		if err != nil {
			answered <- result{err: err}
			return
		}
		resp.Body.Close()
		answered <- result{resp.StatusCode, resp.Header.Get("Dice-Pid"), nil}
	}()
	time.Sleep(300 * time.Millisecond) // The request is now held by -delay.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))

	r := <-answered
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, strconv.Itoa(cmd.Process.Pid), r.pid)
	assert.NoError(t, cmd.Wait(), "exit status 0 after SIGTERM")
}

// waitForAddr reads the service's log until it says where it listens, then keeps
// draining the log so that the service never blocks on a full pipe.
func waitForAddr(t *testing.T, stderr io.Reader) string {
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "msg=serving") {
				for _, field := range strings.Fields(line) {
					if addr, ok := strings.CutPrefix(field, "addr="); ok {
						found <- addr
					}
				}
			}
		}
		close(found)
	}()
	select {
	case addr, ok := <-found:
		require.True(t, ok, "the service exited before it listened")
		_, err := net.ResolveTCPAddr("tcp", addr)
		require.NoError(t, err)
		return addr
	case <-time.After(10 * time.Second):
		t.Fatal("the service did not log its address within 10 s")
		return ""
	}
}

// TestUnderSystemd runs units/01-always-on/dice.service under a real systemd user
// manager: the service is active and answers, from its MainPID, and
// `systemctl stop` ends the process.
func TestUnderSystemd(t *testing.T) {
	m := systemdtest.New(t)
	port := systemdtest.FreePort(t)
	m.InstallUnits(t, systemdtest.Install{
		Stage:  "01-always-on",
		Binary: systemdtest.BuildStage(t, "01-always-on"),
		Args:   []string{"-addr", fmt.Sprintf("127.0.0.1:%d", port)},
	})
	m.MustSystemctl(t, "start", "dice.service")
	m.WaitProp(t, "dice.service", "ActiveState", "active", 5*time.Second)
	pid := m.MainPID(t, "dice.service")
	require.Positive(t, pid)

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/roll")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "the service listens on its port")
	status, answeredBy, a := stagetest.Roll(t, http.DefaultClient, base)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, pid, answeredBy, "Dice-Pid is the unit's MainPID")
	assert.GreaterOrEqual(t, a.Result, 1)
	assert.LessOrEqual(t, a.Result, 6)
	t.Run("bad requests", func(t *testing.T) { stagetest.SendBadRequests(t, base) })
	assert.Equal(t, pid, m.MainPID(t, "dice.service"), "bad requests did not end the service")

	m.MustSystemctl(t, "stop", "dice.service")
	assert.Equal(t, "inactive", m.Show(t, "dice.service", "ActiveState"))
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"), "exit status 0 on SIGTERM")
	assert.NoDirExists(t, fmt.Sprintf("/proc/%d", pid), "systemctl stop ended the process")
}
