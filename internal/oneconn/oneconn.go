// Package oneconn lets an http.Server serve a single connection that is already
// open, as systemd passes it to each instance of an Accept=yes service.
package oneconn

import (
	"net"
	"sync"
)

// Listener hands out one connection, then blocks in Accept until it is closed.
// http.Server.Serve(l) thus serves that connection, keep-alive requests included,
// and returns when Shutdown (or Close) closes the listener.
type Listener struct {
	conn   net.Conn
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// New returns a Listener whose first Accept returns c.
func New(c net.Conn) *Listener {
	l := &Listener{conn: c, conns: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.conns <- c
	return l
}

// Accept returns the connection the first time, then waits until l is closed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close makes Accept return net.ErrClosed. It does not close the connection: the
// server that accepted it does.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the connection's local address, the one systemd listens on.
func (l *Listener) Addr() net.Addr { return l.conn.LocalAddr() }
