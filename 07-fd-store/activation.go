package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
)

// checkEnv reports why systemd's sockets cannot be this process's: nothing passed, or
// passed to another pid (what `go run` and wrapper scripts cause). It must run before
// activation.Listeners, which unsets the variables.
func checkEnv() error {
	fds, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID")
	switch {
	case fds == "":
		return errors.New("no socket passed by systemd (LISTEN_FDS unset): start " +
			"dice.socket (make run-stage 7), or try: systemd-socket-activate " +
			"-l 127.0.0.1:8080 ./bin/07-fd-store; `go run` cannot work: it runs " +
			"the program as a child, with another pid")
	case pid != strconv.Itoa(os.Getpid()):
		return fmt.Errorf("systemd passed its sockets to pid %s, this is pid %d: run the "+
			"built binary itself in ExecStart= (not `go run` or a wrapper that forks; a "+
			"shell script must `exec` it)", pid, os.Getpid())
	}
	return nil
}

// split tells the connections systemd kept in its fd store (named storedName) from
// the sockets of dice.socket, and checks that those are one listening stream socket.
// A stored connection the client has closed meanwhile is served like any other: its
// first read ends it, without a word.
func split(files []*os.File) (ln net.Listener, taken []net.Conn, err error) {
	var lns []net.Listener
	for _, f := range files {
		if f.Name() == storedName {
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				return nil, nil, fmt.Errorf("a stored connection: %w", err)
			}
			taken = append(taken, c)
			continue
		}
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			l = nil // Not a stream socket: oneListener says so.
		}
		lns = append(lns, l)
	}
	if len(lns) != 1 {
		return nil, nil, fmt.Errorf("systemd passed %d sockets besides the stored "+
			"connections, this service takes exactly 1: give the socket unit one "+
			"ListenStream= line", len(lns))
	}
	ln, err = oneListener(lns)
	return ln, taken, err
}

// oneListener checks what activation.Listeners returned: one listening stream socket.
func oneListener(lns []net.Listener) (net.Listener, error) {
	if len(lns) != 1 || lns[0] == nil {
		return nil, errors.New("fd 3 is not a stream socket (a ListenDatagram= or " +
			"ListenFIFO= line?): this service needs one ListenStream=")
	}
	// net.FileListener also takes a connected socket, whose Accept then fails.
	acceptConn, err := sockopt(lns[0].(syscall.Conn), syscall.SO_ACCEPTCONN)
	if err != nil {
		return nil, fmt.Errorf("fd 3: %w", err)
	}
	if acceptConn != 1 {
		lns[0].Close()
		return nil, errors.New("fd 3 is one connection, not a listening socket: the " +
			"socket unit has Accept=yes; use Accept=no (the default) for this stage, " +
			"or run ./bin/04-accept-yes, which serves one connection per process")
	}
	return lns[0], nil
}

// sockopt reads the integer socket option opt of c.
func sockopt(c syscall.Conn, opt int) (value int, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	ctrlErr := raw.Control(func(fd uintptr) {
		value, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt)
	})
	return value, errors.Join(ctrlErr, err)
}
