// Command floor is the benchmark's Go floor: the least a socket-activated Go program
// can do to answer GET /roll. No net/http, no flags, no logging: it takes fd 3 from
// systemd, answers one request with a fixed response and exits. What it costs is
// the cost of systemd starting a Go process; a stage's cold start is compared with it.
//
// With Accept=yes fd 3 is the connection; with Accept=no it is the listening socket,
// and floor accepts one connection on it. Under Type=notify it sends READY=1 first,
// as stage 03 does.
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
	conn := 3
	listening, _ := syscall.GetsockoptInt(3, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	if listening == 1 {
		var err error
		if conn, _, err = syscall.Accept(3); err != nil {
			os.Exit(1)
		}
	}
	// The request: a client's GET /roll comes in one segment.
	buf := make([]byte, 4096)
	if _, err := syscall.Read(conn, buf); err != nil {
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
