package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFiresWithoutAnyConnection(t *testing.T) {
	t.Parallel()
	fired := make(chan struct{})
	startIdleTimer(50*time.Millisecond, func() { close(fired) }, nil)
	select {
	case <-fired:
	case <-time.After(2 * time.Second):
		t.Fatal("no connection for 50ms, yet onIdle did not run within 2s")
	}
}

func TestOpenConnectionHoldsTheClock(t *testing.T) {
	t.Parallel()
	var fired atomic.Bool
	reported := make(chan int, 10)
	tm := startIdleTimer(50*time.Millisecond, func() { fired.Store(true) },
		func(open int) { reported <- open })
	c1, c2 := &net.TCPConn{}, &net.TCPConn{}

	tm.ConnState(c1, http.StateNew)
	tm.ConnState(c2, http.StateNew)
	tm.ConnState(c1, http.StateActive)
	tm.ConnState(c1, http.StateIdle) // Keep-alive between two requests: still open.
	tm.ConnState(c2, http.StateHijacked)
	time.Sleep(150 * time.Millisecond)
	assert.False(t, fired.Load(), "a connection is still open")
	assert.Equal(t, 1, tm.Open())

	tm.ConnState(c1, http.StateClosed)
	assert.Eventually(t, fired.Load, 2*time.Second, 10*time.Millisecond,
		"the last connection closed 50ms ago: onIdle should run")
	// Reports may be coalesced, but the last one has the latest number.
	last := -1
	assert.Eventually(t, func() bool {
		for {
			select {
			case last = <-reported:
			default:
				return last == 0
			}
		}
	}, 2*time.Second, 10*time.Millisecond, "the last report says 0 open")
}

// TestWithHTTPServer runs the idle timer under a real http.Server: a keep-alive
// connection keeps it busy, and it fires once the connection is closed.
func TestWithHTTPServer(t *testing.T) {
	t.Parallel()
	fired := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(
		func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	tm := startIdleTimer(200*time.Millisecond, func() { close(fired) }, nil)
	srv.Config.ConnState = tm.ConnState
	srv.Start()
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{}}
	deadline := time.Now().Add(600 * time.Millisecond)
	for time.Now().Before(deadline) {
		resp, err := client.Get(srv.URL)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-fired:
		t.Fatal("fired while a keep-alive connection was in use")
	default:
	}
	// Usually one connection served them all; under load the client may have dialled
	// a second before the first went back to its pool. Either way one is still open.
	assert.GreaterOrEqual(t, tm.Open(), 1, "the kept-alive connection is still open")

	client.CloseIdleConnections()
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection closed, yet onIdle did not run within 10s")
	}
}
