package dice

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestServeFinishesRequestsInFlight(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	entered, release := make(chan struct{}), make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		(&Handler{Log: log}).ServeHTTP(w, r)
	})
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, NewServer(slow, log), ln) }()

	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/roll")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-entered // The request is in flight.
	stop()
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 10*time.Second, 10*time.Millisecond, "nothing accepts after the stop")
	close(release)

	assert.Equal(t, http.StatusOK, <-answered, "the request in flight is answered")
	require.NoError(t, <-served, "Serve returns nil after a graceful stop")
}

// TestServeAnswersAConnectionAcceptedAsItStops is the race of an idle exit, slowed
// down: a client connects, the stop comes, and only then does the client send its
// request. Serve must answer it (http.Server.Shutdown would close the connection
// without an answer), and accept no other connection meanwhile.
func TestServeAnswersAConnectionAcceptedAsItStops(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := NewServer(&Handler{Log: log}, log)
	accepted := make(chan struct{}, 1)
	srv.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			accepted <- struct{}{}
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, srv, ln) }()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	<-accepted // The hook set before Serve still runs.
	stop()
	require.Eventually(t, func() bool {
		other, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			other.Close()
		}
		return err != nil
	}, 5*time.Second, 5*time.Millisecond, "the listener is closed")

	_, err = fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err, "the accepted connection gets its answer")
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, resp.Close, "and is closed after it: keep-alives are off")
	select {
	case err := <-served:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the last connection closed")
	}
}

// TestNewServerHasTheTimeouts: what makes a silent or idle client let go of a
// connection (and, in stage 04, of its process) is set on every server.
func TestNewServerHasTheTimeouts(t *testing.T) {
	t.Parallel()
	srv := NewServer(http.NotFoundHandler(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	assert.Equal(t, ReadHeaderTimeout, srv.ReadHeaderTimeout)
	assert.Equal(t, IdleTimeout, srv.IdleTimeout)
	assert.Equal(t, MaxHeaderBytes, srv.MaxHeaderBytes)
}
