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
// activation.Files, which unsets the variables.
func checkEnv() error {
	fds, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID")
	switch {
	case fds == "":
		return errors.New("no socket passed by systemd (LISTEN_FDS unset): start " +
			"dice.socket (make run-stage 4), or try: systemd-socket-activate --accept " +
			"-l 127.0.0.1:8080 ./bin/04-accept-yes; `go run` cannot work: it runs " +
			"the program as a child, with another pid")
	case pid != strconv.Itoa(os.Getpid()):
		return fmt.Errorf("systemd passed its sockets to pid %s, this is pid %d: run the "+
			"built binary itself in ExecStart= (not `go run` or a wrapper that forks; a "+
			"shell script must `exec` it)", pid, os.Getpid())
	case fds != "1":
		return fmt.Errorf("systemd passed %s sockets (LISTEN_FDS=%[1]s), this service "+
			"takes exactly 1 connection: give the socket unit one ListenStream= line "+
			"and Accept=yes", fds)
	}
	return nil
}

// oneConn checks what activation.Files returned for an Accept=yes socket unit: one
// connected stream socket. net.FileListener would take it too, and its Accept would
// then fail: a connection is turned into a net.Conn with net.FileConn.
func oneConn(files []*os.File) (net.Conn, error) {
	f := files[0]   // checkEnv made sure that there is one.
	defer f.Close() // net.FileConn keeps a duplicate.
	typ, typErr := sockopt(f, syscall.SO_TYPE)
	acceptConn, accErr := sockopt(f, syscall.SO_ACCEPTCONN)
	switch {
	case typErr != nil || accErr != nil:
		return nil, fmt.Errorf("fd 3 is not a socket: %w", errors.Join(typErr, accErr))
	case typ != syscall.SOCK_STREAM:
		return nil, errors.New("fd 3 is not a stream connection (a ListenDatagram= or " +
			"ListenFIFO= line?): this service needs ListenStream= and Accept=yes")
	case acceptConn == 1:
		return nil, errors.New("fd 3 is a listening socket, not one connection: the " +
			"socket unit needs Accept=yes (with dice@.service), or run " +
			"./bin/02-socket-activated, which serves a listening socket")
	}
	return net.FileConn(f)
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
