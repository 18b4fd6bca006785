package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAcceptOnceThenBlockUntilClosed(t *testing.T) {
	t.Parallel()
	server, client := net.Pipe()
	defer client.Close()
	l := newOneConnListener(server)

	c, err := l.Accept()
	require.NoError(t, err)
	assert.Same(t, server, c)

	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	select {
	case <-accepted:
		t.Fatal("the second Accept returned before Close")
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, l.Close())
	require.NoError(t, l.Close(), "a second Close is harmless")
	assert.ErrorIs(t, <-accepted, net.ErrClosed)
}

// TestServesKeepAliveRequestsOnOneConnection serves one TCP connection with
// http.Server, as stage 04 does, and sends three requests over it.
func TestServesKeepAliveRequestsOnOneConnection(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(t, err)

	ctx, done := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, r.URL.Path)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				done()
			}
		},
	}
	l := newOneConnListener(server)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.Background())
	}()

	r := bufio.NewReader(client)
	for i := range 3 {
		_, err := fmt.Fprintf(client, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		require.NoError(t, err)
		resp, err := http.ReadResponse(r, nil)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("/%d", i), string(body))
	}
	assert.Equal(t, ln.Addr().String(), l.Addr().String())
	require.NoError(t, client.Close())
	select {
	case err := <-served:
		assert.ErrorIs(t, err, http.ErrServerClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the client closed the connection")
	}
}
