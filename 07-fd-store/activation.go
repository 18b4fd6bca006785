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
			"dice.socket (make run-stage 3), or try: systemd-socket-activate " +
			"-l 127.0.0.1:8080 ./bin/03-idle-exit; `go run` cannot work: it runs " +
			"the program as a child, with another pid")
	case pid != strconv.Itoa(os.Getpid()):
		return fmt.Errorf("systemd passed its sockets to pid %s, this is pid %d: run the "+
			"built binary itself in ExecStart= (not `go run` or a wrapper that forks; a "+
			"shell script must `exec` it)", pid, os.Getpid())
	case fds != "1":
		return fmt.Errorf("systemd passed %s sockets (LISTEN_FDS=%[1]s), this service "+
			"takes exactly 1: give the socket unit one ListenStream= line", fds)
	}
	return nil
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
