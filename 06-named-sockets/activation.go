package main

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// checkEnv reports why systemd's sockets cannot be this process's: nothing passed, or
// passed to another pid (what `go run` and wrapper scripts cause). It must run before
// activation.ListenersWithNames, which unsets the variables. It returns LISTEN_FDS.
func checkEnv() (int, error) {
	fds, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID")
	switch {
	case fds == "":
		return 0, errors.New("no socket passed by systemd (LISTEN_FDS unset): start " +
			"dice.socket and dice-admin.socket (make run-stage 6), or try: " +
			"systemd-socket-activate -l 127.0.0.1:8080 -l /tmp/dice-admin.sock " +
			"--fdname=public:admin ./bin/06-named-sockets; `go run` cannot work: it " +
			"runs the program as a child, with another pid")
	case pid != strconv.Itoa(os.Getpid()):
		return 0, fmt.Errorf("systemd passed its sockets to pid %s, this is pid %d: run the "+
			"built binary itself in ExecStart= (not `go run` or a wrapper that forks; a "+
			"shell script must `exec` it)", pid, os.Getpid())
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("LISTEN_FDS=%s is not a number of sockets: systemd sets it; "+
			"is something else setting it in dice.service's Environment=?", fds)
	}
	return n, nil
}

// The unit lines that name the fds, for the errors below.
const (
	publicLine = "FileDescriptorName=public in dice.socket"
	adminLine  = "FileDescriptorName=admin in dice-admin.socket"
)

// byName checks what activation.ListenersWithNames made of the n fds systemd passed:
// "public", one or more TCP listeners; "admin", one unix listener; nothing else. It
// looks at names and kinds, never at the order: systemd does not define it.
func byName(lns map[string][]net.Listener, n int) (public []net.Listener, admin net.Listener,
	err error) {
	var errs []error
	count := 0
	for _, name := range slices.Sorted(maps.Keys(lns)) {
		count += len(lns[name])
		for _, ln := range lns[name] {
			errs = append(errs, check(name, ln))
		}
	}
	if count < n {
		errs = append(errs, fmt.Errorf("%d of the %d fds are not stream sockets (a "+
			"ListenDatagram= or ListenFIFO= line?): this service takes ListenStream= only",
			n-count, n))
	}
	public, admins := lns["public"], lns["admin"]
	switch {
	case len(public) == 0:
		errs = append(errs, fmt.Errorf("no socket named public (fds: %s): start dice.socket, "+
			"with %s, and list it in Sockets= of dice.service", names(lns), publicLine))
	case len(admins) == 0:
		errs = append(errs, fmt.Errorf("no socket named admin (fds: %s): start "+
			"dice-admin.socket, with %s, and list it in Sockets= of dice.service",
			names(lns), adminLine))
	case len(admins) > 1:
		errs = append(errs, fmt.Errorf("the name admin is given to %d sockets (fds: %s): it "+
			"is for one unix socket; keep %s, with one ListenStream= line, and no other",
			len(admins), names(lns), adminLine))
	}
	if err = errors.Join(errs...); err != nil {
		for _, l := range lns {
			for _, ln := range l {
				ln.Close()
			}
		}
		return nil, nil, err
	}
	return public, admins[0], nil
}

// check explains why ln cannot be the socket called name, if it cannot.
func check(name string, ln net.Listener) error {
	switch network := ln.Addr().Network(); {
	case name != "public" && name != "admin":
		fix := "set FileDescriptorName= in its socket unit"
		if strings.HasSuffix(name, ".socket") { // A unit without FileDescriptorName=.
			fix = "add FileDescriptorName= to " + name
		}
		return fmt.Errorf("the socket %s is named %s, which this service does not take: "+
			"%s (%s; %s)", ln.Addr(), name, fix, publicLine, adminLine)
	case name == "public" && network != "tcp":
		return fmt.Errorf("the %s socket %s is named public, which is for TCP: is %s "+
			"copied into its unit? It wants %s", network, ln.Addr(), publicLine, adminLine)
	case name == "admin" && network != "unix":
		return fmt.Errorf("the %s socket %s is named admin, which is for the unix socket: "+
			"is %s copied into its unit? It wants %s", network, ln.Addr(), adminLine,
			publicLine)
	}
	// net.FileListener also takes a connected socket, whose Accept then fails.
	if accepting, err := sockopt(ln.(syscall.Conn), syscall.SO_ACCEPTCONN); err != nil ||
		accepting != 1 {
		return fmt.Errorf("the socket %s is one connection, not a listening socket (%v): "+
			"its unit has Accept=yes; this stage needs Accept=no", ln.Addr(), err)
	}
	return nil
}

// addrs lists the listeners' addresses.
func addrs(l []net.Listener) string {
	var s []string
	for _, ln := range l {
		s = append(s, ln.Addr().String())
	}
	return strings.Join(s, " ")
}

// names lists the names passed, each with how many fds carry it.
func names(lns map[string][]net.Listener) string {
	var s []string
	for _, name := range slices.Sorted(maps.Keys(lns)) {
		s = append(s, fmt.Sprintf("%s x%d", name, len(lns[name])))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
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
