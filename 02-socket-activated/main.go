// Command 02-socket-activated serves dice on a port that systemd opened and passed in.
package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"

	"socket-dice/dice"
)

func main() {
	log := dice.NewLogger()
	if err := run(log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	ln, err := listener()
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid())
	return serve(ctx, ln, &dice.Handler{Log: log}, log)
}

// New in this stage: listener takes the port systemd opened (dice.socket) as fd 3.
func listener() (net.Listener, error) {
	// systemd sets LISTEN_FDS=1 and LISTEN_PID=<our pid>; checkEnv explains if it did not.
	if err := checkEnv(); err != nil {
		return nil, err
	}
	// Listeners turns fds 3, 4, ... into listeners, and unsets LISTEN_FDS and LISTEN_PID
	// so that a child process cannot take them for its own.
	lns, err := activation.Listeners()
	if err != nil {
		return nil, err
	}
	return oneListener(lns)
}

// serve answers rolls on ln until ctx is done, then stops accepting and lets the
// requests in flight finish.
func serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	return dice.Serve(ctx, dice.NewServer(h, log), ln)
}
