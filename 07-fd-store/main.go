// Command 03-idle-exit serves dice on a port that systemd opened, and exits when idle.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"socket-dice/dice"
)

func main() {
	idle := flag.Duration("idle", 30*time.Second, "exit after this long with no connection")
	flag.Parse()
	log := dice.NewLogger()
	if err := run(*idle, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(idle time.Duration, log *slog.Logger) error {
	ln, err := listener()
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "addr", ln.Addr().String(), "pid", os.Getpid())
	return serve(ctx, ln, &dice.Handler{Log: log}, log, idle)
}

// listener takes the port systemd opened (dice.socket) as fd 3.
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
func serve(ctx context.Context, ln net.Listener, h *dice.Handler, log *slog.Logger,
	idle time.Duration) error {
	// New in this stage: once no connection has been open for idle, serve ends as if
	// stopped, and main exits 0. systemd keeps its copy of the socket listening:
	// connections that arrive from now on wait there and start the next instance.
	ctx, exit := context.WithCancel(ctx)
	defer exit()
	srv := dice.NewServer(h, log)
	srv.ConnState = startIdleTimer(idle, func() {
		log.Info("idle, exiting", "after", idle, "rolls", h.Rolls())
		_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
		exit()
	}, func(open int) {
		// `systemctl status dice.service` shows this line (Type=notify).
		_, _ = daemon.SdNotify(false, fmt.Sprintf("STATUS=served %d rolls; %d connections "+
			"open; exits after %s idle", h.Rolls(), open, idle))
	}).ConnState
	// READY=1 tells systemd (Type=notify) that the service is up.
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	return dice.Serve(ctx, srv, ln)
}
