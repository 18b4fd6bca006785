package main

import (
	"bufio"
	"context"
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

	"socket-dice/dice"
	"socket-dice/dice/dicetest"
	"socket-dice/internal/stagetest"
)

// TestMain lets a test run this very binary as the stage's main, flags and
// signals included (stagetest.Self).
func TestMain(m *testing.M) { stagetest.Main(m, main) }

func TestServeAnswersRolls(t *testing.T) {
	t.Parallel()
	ln, err := listener("127.0.0.1:0")
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, &dice.Handler{Log: log}, log) }()

	status, pid, a := dicetest.Roll(t, http.DefaultClient, "http://"+ln.Addr().String())
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, os.Getpid(), pid)
	assert.GreaterOrEqual(t, a.Result, 1)
	assert.LessOrEqual(t, a.Result, 6)

	stop()
	assert.NoError(t, <-done)
}

func TestListenerRefusesABusyPort(t *testing.T) {
	t.Parallel()
	ln, err := listener("127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = listener(ln.Addr().String())
	assert.ErrorContains(t, err, "address already in use")
}

// TestSIGTERMFinishesTheRequestInFlight runs the stage as its own process, sends
// SIGTERM while a request is in flight, and expects the answer and exit status 0.
func TestSIGTERMFinishesTheRequestInFlight(t *testing.T) {
	t.Parallel()
	cmd := stagetest.Self("-addr", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	finish := stagetest.InFlight(t, waitForAddr(t, stderr))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	resp, err := finish()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, strconv.Itoa(cmd.Process.Pid), resp.Header.Get("Dice-Pid"))
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
