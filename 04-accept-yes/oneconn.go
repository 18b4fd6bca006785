package main

import (
	"net"
	"sync"
)

// oneConnListener lets an http.Server serve a single connection that is already open,
// as systemd passes it to each instance of an Accept=yes service: it hands out that
// connection, then blocks in Accept until it is closed. http.Server.Serve thus serves
// the connection, keep-alive requests included, and returns when the listener closes.
type oneConnListener struct {
	conn   net.Conn
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// newOneConnListener returns a listener whose first Accept returns c.
func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conn: c, conns: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.conns <- c
	return l
}

// Accept returns the connection the first time, then waits until l is closed.
func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close makes Accept return net.ErrClosed. It does not close the connection: the
// server that accepted it does.
func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the connection's local address, the one systemd listens on.
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
