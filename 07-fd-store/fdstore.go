package main

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// storedName is the name systemd keeps each stored connection under (FDNAME=), and
// gives it back with in LISTEN_FDNAMES: it tells them from the listening socket.
const storedName = "keepalive"

// fdStore talks to systemd's fd store through the notify socket ($NOTIFY_SOCKET), the
// one that READY=1 goes to. go-systemd's daemon.SdNotify sends text only; a file
// descriptor travels as SCM_RIGHTS ancillary data of the same datagram, as
// sd_pid_notify_with_fds(3) sends it: one sendmsg(2), written out here.
type fdStore struct {
	sock int    // an unbound, unconnected datagram socket of ours
	addr string // systemd's notify socket
}

// openFDStore opens a socket for $NOTIFY_SOCKET; nil without one (not started by
// systemd). If this process took connections back, it removes them from the store.
func openFDStore(took bool) (*fdStore, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil, nil
	}
	sock, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	s := &fdStore{sock: sock, addr: addr}
	if took {
		err = s.Forget()
	}
	return s, err
}

// send sends one notify message, with fd attached unless it is -1.
func (s *fdStore) send(msg string, fd int) error {
	var rights []byte
	if fd >= 0 {
		rights = syscall.UnixRights(fd)
	}
	// A name that starts with '@' is an abstract socket: SockaddrUnix turns the '@' into
	// the NUL byte that the kernel expects, as systemd means it.
	return syscall.Sendmsg(s.sock, []byte(msg), rights, &syscall.SockaddrUnix{Name: s.addr}, 0)
}

// Store puts the socket of c in systemd's fd store (FDSTORE=1) under storedName.
// systemd keeps a duplicate: closing c afterwards leaves the connection open. It
// takes one only while FileDescriptorStoreMax= leaves room, and closes the rest.
func (s *fdStore) Store(c net.Conn) error {
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	var sendErr error
	err = raw.Control(func(fd uintptr) {
		sendErr = s.send("FDSTORE=1\nFDNAME="+storedName, int(fd))
	})
	return errors.Join(err, sendErr)
}

// Barrier returns once systemd has read every message sent before it
// (sd_notify_barrier(3)): it sends BARRIER=1 with the write end of a pipe, which
// systemd closes when it gets there; the read end then reads EOF. Exiting before
// would race with systemd reading the last FDSTORE=1.
func (s *fdStore) Barrier(timeout time.Duration) error {
	if s == nil {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	err = s.send("BARRIER=1", int(w.Fd()))
	w.Close()
	if err != nil {
		return err
	}
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		return errors.Join(errors.New("systemd did not answer BARRIER=1"), err)
	}
	return nil
}

// Forget removes the stored connections from the store (FDSTOREREMOVE=1): this process
// holds them now. systemd's copies would keep them open after this process closed
// them, and go to the next instance again.
func (s *fdStore) Forget() error {
	return s.send("FDSTOREREMOVE=1\nFDNAME="+storedName, -1)
}
