package main

import (
	"context"
	"errors"
	"net"
	"net/http"

	"socket-dice/dice"
)

// serveAll serves each listener with its server (dice.Serve: stops gracefully when
// ctx is done), and every connection also goes to connState. It returns once all
// have returned: when ctx is done, or at the first that fails, which stops the others.
func serveAll(ctx context.Context, servers map[net.Listener]*http.Server,
	connState func(net.Conn, http.ConnState)) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, len(servers))
	for ln, srv := range servers {
		srv.ConnState = connState
		go func() {
			errs <- dice.Serve(ctx, srv, ln)
			stop()
		}()
	}
	var all []error
	for range servers {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}
