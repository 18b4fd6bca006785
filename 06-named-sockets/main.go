// Command 06-named-sockets serves dice on TCP and /stats on a unix socket; it exits when idle.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	public, admin, err := listeners()
	if err != nil {
		return err
	}
	// systemctl stop sends SIGTERM; Ctrl-C sends SIGINT. Both end serve gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info("serving", "public", addrs(public), "admin", admin.Addr().String(), "pid", os.Getpid())
	return serve(ctx, public, admin, &dice.Handler{Log: log}, log, idle)
}

// New in this stage: listeners takes the sockets by name (LISTEN_FDNAMES), not position.
func listeners() (public []net.Listener, admin net.Listener, err error) {
	n, err := checkEnv() // The number of fds, before ListenersWithNames unsets it.
	if err != nil {
		return nil, nil, err
	}
	lns, err := activation.ListenersWithNames()
	if err != nil {
		return nil, nil, err
	}
	return byName(lns, n)
}

// serve answers on every listener until ctx is done, or none has had a connection open
// for idle; then it stops accepting and lets the requests in flight finish.
func serve(ctx context.Context, public []net.Listener, admin net.Listener, h *dice.Handler,
	log *slog.Logger, idle time.Duration) error {
	ctx, exit := context.WithCancel(ctx)
	defer exit()
	timer := startIdleTimer(idle, func() {
		log.Info("idle, exiting", "after", idle, "rolls", h.Rolls())
		_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
		exit()
	}, func(open int) {
		// `systemctl status dice.service` shows this line (Type=notify).
		_, _ = daemon.SdNotify(false, fmt.Sprintf("STATUS=served %d rolls; %d connections "+
			"open; exits after %s idle", h.Rolls(), open, idle))
	})
	// New in this stage: a server per socket, every connection counted by the one timer.
	servers := map[net.Listener]*http.Server{admin: newAdminServer(h, timer.Open, log)}
	for _, ln := range public {
		servers[ln] = dice.NewServer(h, log)
	}
	// READY=1 tells systemd (Type=notify) that the service is up.
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	return serveAll(ctx, servers, timer.ConnState)
}
