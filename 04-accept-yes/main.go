// Command 04-accept-yes serves dice on one connection that systemd accepted for it.
package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"socket-dice/dice"
)

func main() {
	// A connection that sends nothing holds its process (and a MaxConnections= slot)
	// this long.
	headerTimeout := flag.Duration("header-timeout", dice.ReadHeaderTimeout,
		"how long a connection may take to send its request headers")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(log, *headerTimeout); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, headerTimeout time.Duration) error {
	c, err := conn()
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "remote", c.RemoteAddr().String(), "pid", os.Getpid())
	srv := dice.NewServer(&dice.Handler{Log: log}, log)
	srv.ReadHeaderTimeout = headerTimeout
	return serve(ctx, c, srv)
}

// New in this stage: with Accept=yes, systemd accepts each connection itself and
// starts one dice@.service instance for it, passing the connection as fd 3.
func conn() (net.Conn, error) {
	// systemd sets LISTEN_FDS=1, LISTEN_PID=<our pid> and LISTEN_FDNAMES=connection.
	if err := checkEnv(); err != nil {
		return nil, err
	}
	// Files returns fds 3, 4, ... as they are: this one is a connection, not a listener.
	return oneConn(activation.Files(true))
}

// serve answers the requests on c with srv, keep-alive ones included, until the
// client closes it, a timeout of srv does, or ctx is done; then the process exits.
func serve(ctx context.Context, c net.Conn, srv *http.Server) error {
	ctx, closed := context.WithCancel(ctx)
	defer closed()
	// ReadHeaderTimeout and IdleTimeout close a silent connection, ending the process.
	srv.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateClosed {
			closed()
		}
	}
	return dice.Serve(ctx, srv, newOneConnListener(c))
}
