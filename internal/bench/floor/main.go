// Command floor is the benchmark's Go floor: the least a socket-activated Go program
// can do to answer GET /roll, without net/http, so that what it costs is systemd
// starting a Go process. It takes fd 3 (with Accept=no the listening socket, on which
// it accepts one connection), sends READY=1 under Type=notify as stage 03 does,
// answers one request with a fixed response, and exits.
package main

import (
	"os"
	"strconv"
	"syscall"
)

func main() {
	if name := os.Getenv("NOTIFY_SOCKET"); name != "" {
		fd, _ := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
		_ = syscall.Sendto(fd, []byte("READY=1"), 0, &syscall.SockaddrUnix{Name: name})
	}
	conn, err := 3, error(nil)
	if on, _ := syscall.GetsockoptInt(3, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); on == 1 {
		conn, _, err = syscall.Accept(3)
	}
	buf := make([]byte, 4096) // a client's GET /roll comes in one segment
	if _, rerr := syscall.Read(conn, buf); err != nil || rerr != nil {
		os.Exit(1)
	}
	_, _ = syscall.Write(conn, []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"+
		"Dice-Pid: "+strconv.Itoa(os.Getpid())+"\r\nContent-Length: 13\r\nConnection: close\r\n"+
		"\r\n"+`{"result":4}`+"\n"))
	// Read until the client closes: closing a socket with unread data makes the kernel
	// send a reset, and the client may lose the response.
	_ = syscall.Shutdown(conn, syscall.SHUT_WR)
	for n, _ := syscall.Read(conn, buf); n > 0; n, _ = syscall.Read(conn, buf) {
	}
}
