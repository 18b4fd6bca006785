// Command floor is the benchmark's floor: the least a socket-activated Go program can
// do to answer GET /roll. It has no net/http, no flags and no logging: it takes fd 3
// from systemd, answers one request with a fixed response and exits. What it costs
// is the cost of systemd starting a Go process; a stage's cold start is compared
// with it.
//
// With Accept=yes fd 3 is the connection; with Accept=no it is the listening
// socket, and floor accepts one connection on it. Under Type=notify it sends
// READY=1 first, as stage 03 does.
package main

import (
	"os"
	"strconv"
	"syscall"
)

const body = `{"result":4}` + "\n"

func main() {
	conn, err := connection()
	if err != nil {
		os.Stderr.WriteString("floor: " + err.Error() + "\n")
		os.Exit(1)
	}
	// Read the request headers before answering: closing a socket with unread data
	// makes the kernel send a reset, and the client may lose the response.
	readHeaders(conn)
	response := "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
		"Dice-Pid: " + strconv.Itoa(os.Getpid()) + "\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body
	for b := []byte(response); len(b) > 0; {
		n, err := syscall.Write(conn, b)
		if err != nil && err != syscall.EINTR {
			os.Exit(1)
		}
		b = b[max(n, 0):]
	}
	_ = syscall.Shutdown(conn, syscall.SHUT_WR)
	readHeaders(conn) // until the client closes: no reset.
}

// connection is fd 3 itself (Accept=yes) or one connection accepted on it (Accept=no).
func connection() (int, error) {
	if os.Getenv("LISTEN_FDS") != "1" || os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return -1, syscall.EBADF
	}
	listening, err := syscall.GetsockoptInt(3, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	if err != nil {
		return -1, err
	}
	notifyReady()
	if listening == 0 {
		return 3, nil
	}
	for {
		fd, _, err := syscall.Accept(3)
		if err != syscall.EINTR && err != syscall.EAGAIN {
			return fd, err
		}
	}
}

// notifyReady sends READY=1 to systemd when it asked for it (Type=notify).
func notifyReady() {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer syscall.Close(fd)
	_ = syscall.Sendto(fd, []byte("READY=1"), 0, &syscall.SockaddrUnix{Name: name})
}

// readHeaders reads until the end of the request headers, or until EOF or an error.
func readHeaders(fd int) {
	var buf [4096]byte
	var last [4]byte
	for {
		n, err := syscall.Read(fd, buf[:])
		if err == syscall.EINTR || err == syscall.EAGAIN {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
		for _, c := range buf[:n] {
			last = [4]byte{last[1], last[2], last[3], c}
			if last == [4]byte{'\r', '\n', '\r', '\n'} {
				return
			}
		}
	}
}
