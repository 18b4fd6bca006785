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

	"example.com/socket-dice/dice"
	"example.com/socket-dice/internal/activated"
	"example.com/socket-dice/internal/oneconn"
)

func main() {
	delay := flag.Duration("delay", 0, "hold each answer this long (to watch a graceful stop)")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(*delay, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(delay time.Duration, log *slog.Logger) error {
	c, err := conn()
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "remote", c.RemoteAddr().String(), "pid", os.Getpid())
	return serve(ctx, c, &dice.Handler{Log: log, Delay: delay}, log)
}

// New in this stage: with Accept=yes, systemd accepts each connection itself and
// starts one dice@.service instance for it, passing the connection as fd 3.
func conn() (net.Conn, error) {
	// systemd set LISTEN_FDS=1, LISTEN_PID=<our pid> and LISTEN_FDNAMES=connection.
	if err := activated.CheckEnv("--accept -l 127.0.0.1:8080"); err != nil {
		return nil, err
	}
	return activated.Conn(activation.Files(true))
}

// serve answers the requests on c, keep-alive ones included, until the client
// closes it, a timeout does, or ctx is done; then the process exits.
func serve(ctx context.Context, c net.Conn, h http.Handler, log *slog.Logger) error {
	ctx, closed := context.WithCancel(ctx)
	defer closed()
	srv := dice.NewServer(h, log)
	// ReadHeaderTimeout and IdleTimeout close a silent connection, ending the process.
	srv.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateClosed {
			closed()
		}
	}
	return dice.Serve(ctx, srv, oneconn.New(c))
}
