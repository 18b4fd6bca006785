// Package activated checks the sockets systemd passes to a socket-activated stage and
// turns every wrong case into an error that names the fix.
//
// systemd passes sockets as file descriptors 3, 4, ... and announces them in the
// environment: LISTEN_FDS (how many), LISTEN_PID (for which process) and
// LISTEN_FDNAMES. go-systemd's activation package reads them; this package explains
// what went wrong when they are missing or are not what the stage expects.
package activated

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// CheckEnv reports why systemd's sockets cannot be this process's: nothing passed, or
// passed to another pid (what `go run` and wrapper scripts cause). Call it before
// activation.Listeners or activation.Files, which clear the variables. tryFlags are the
// systemd-socket-activate flags that start this program without units.
func CheckEnv(tryFlags string) error {
	fds, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID")
	switch {
	case fds == "":
		return fmt.Errorf("no socket passed by systemd (LISTEN_FDS unset): start dice.socket "+
			"(make run-stage %s), or try: systemd-socket-activate %s %s; `go run` cannot "+
			"work: it runs the program as a child, with another pid", stage(), tryFlags,
			self())
	case pid != strconv.Itoa(os.Getpid()):
		return fmt.Errorf("systemd passed its sockets to pid %s, this is pid %d: run the "+
			"built binary itself in ExecStart= (not `go run` or a wrapper that forks; a "+
			"shell script must `exec` it)", pid, os.Getpid())
	case fds != "1":
		return fmt.Errorf("systemd passed %s sockets (LISTEN_FDS=%s), this service takes "+
			"exactly 1: give the socket unit one ListenStream= line", fds, fds)
	}
	return nil
}

// Listener checks what activation.Listeners returned: exactly one listening stream
// socket. It takes both results, as in Listener(activation.Listeners()).
func Listener(lns []net.Listener, err error) (net.Listener, error) {
	if err != nil {
		return nil, err
	}
	if len(lns) != 1 {
		return nil, fmt.Errorf("got %d sockets from systemd, want exactly 1: %s",
			len(lns), "give the socket unit one ListenStream= line")
	}
	if lns[0] == nil {
		return nil, errors.New("fd 3 is not a stream socket (a ListenDatagram= or " +
			"ListenFIFO= line?): this service needs ListenStream=")
	}
	_, listening, err := kind(lns[0].(syscall.Conn))
	if err != nil {
		return nil, fmt.Errorf("fd 3: %w", err)
	}
	if !listening {
		lns[0].Close()
		return nil, errors.New("fd 3 is one connection, not a listening socket: the socket " +
			"unit has Accept=yes; use Accept=no (the default) for this stage, " +
			"or run ./bin/04-accept-yes, which serves one connection per process")
	}
	return lns[0], nil
}

// Conn checks what activation.Files returned for an Accept=yes socket unit: exactly
// one connected stream socket, and turns it into a net.Conn.
func Conn(files []*os.File) (net.Conn, error) {
	if len(files) != 1 {
		return nil, fmt.Errorf("got %d sockets from systemd, want exactly 1 connection: "+
			"give the socket unit one ListenStream= line and Accept=yes", len(files))
	}
	defer files[0].Close() // net.FileConn keeps a duplicate.
	stream, listening, err := kind(files[0])
	switch {
	case err != nil:
		return nil, fmt.Errorf("fd 3: %w", err)
	case !stream:
		return nil, errors.New("fd 3 is not a stream connection (a ListenDatagram= or " +
			"ListenFIFO= line?): this service needs ListenStream= and Accept=yes")
	case listening:
		return nil, errors.New("fd 3 is a listening socket, not one connection: the " +
			"socket unit needs Accept=yes (with dice@.service), or run " +
			"./bin/02-socket-activated, which serves a listening socket")
	}
	return net.FileConn(files[0])
}

// kind tells a stream socket (SO_TYPE) and a listening one (SO_ACCEPTCONN) from
// the others.
func kind(c syscall.Conn) (stream, listening bool, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return false, false, err
	}
	var typ, acc int
	var typErr, accErr error
	if err := raw.Control(func(fd uintptr) {
		typ, typErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TYPE)
		acc, accErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	}); err != nil {
		return false, false, err
	}
	if err := errors.Join(typErr, accErr); err != nil {
		return false, false, fmt.Errorf("not a socket: %w", err)
	}
	return typ == syscall.SOCK_STREAM, acc == 1, nil
}

// self is how to run this program: under `go run`, os.Args[0] is a temporary
// binary in Go's build cache, so the built one in bin/ is named instead.
func self() string {
	if strings.Contains(os.Args[0], "go-build") {
		return "./bin/" + filepath.Base(os.Args[0]) + " (after make build)"
	}
	return os.Args[0]
}

// stage is this program's stage number, from its name (bin/02-socket-activated: 2).
func stage() string {
	name := filepath.Base(os.Args[0])
	if len(name) > 3 && name[0] == '0' && name[2] == '-' {
		return name[1:2]
	}
	return "N"
}
