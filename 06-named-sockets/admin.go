package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"socket-dice/dice"
)

// Stats is the body of GET /stats on the admin socket.
type Stats struct {
	Rolls           int64   `json:"rolls"`
	ConnectionsOpen int     `json:"connections_open"`
	UptimeSeconds   float64 `json:"uptime_seconds"`
	Pid             int     `json:"pid"`
}

// adminHandler answers GET /stats, the operator's endpoint, and logs who asked: the
// uid of the process at the other end of the unix socket, as the kernel saw it.
type adminHandler struct {
	dice  *dice.Handler
	open  func() int
	start time.Time
	log   *slog.Logger
}

func (a *adminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	status, body := http.StatusOK, any(Stats{Rolls: a.dice.Rolls(), ConnectionsOpen: a.open(),
		UptimeSeconds: time.Since(a.start).Round(time.Millisecond).Seconds(), Pid: os.Getpid()})
	switch {
	case r.URL.Path != "/stats":
		status, body = http.StatusNotFound, dice.Error{Error: "no such path " +
			strconv.Quote(r.URL.Path) + " on the admin socket: try GET /stats"}
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		status, body = http.StatusMethodNotAllowed, dice.Error{Error: "method " + r.Method +
			" is not allowed on /stats: use GET"}
	}
	w.Header().Set("Dice-Pid", strconv.Itoa(os.Getpid()))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body) // A write error means the client is gone.
	uid, _ := r.Context().Value(peerUIDKey{}).(int)
	a.log.Info("admin request", "method", r.Method, "uri", r.URL.RequestURI(),
		"status", status, "peer_uid", uid)
}

// newAdminServer is the admin socket's server: /stats, with the caller's uid logged.
func newAdminServer(h *dice.Handler, open func() int, log *slog.Logger) *http.Server {
	srv := dice.NewServer(&adminHandler{h, open, time.Now(), log}, log)
	srv.ConnContext = withPeerUID
	return srv
}

type peerUIDKey struct{}

// withPeerUID is an http.Server's ConnContext: it puts the uid of the process that
// connected (SO_PEERCRED, as the kernel recorded it at connect) in the context of
// the connection's requests; -1 if it cannot be read.
func withPeerUID(ctx context.Context, c net.Conn) context.Context {
	uid := -1
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET,
					syscall.SO_PEERCRED)
				if err == nil {
					uid = int(cred.Uid)
				}
			})
		}
	}
	return context.WithValue(ctx, peerUIDKey{}, uid)
}
