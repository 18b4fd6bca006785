package main

// The tests in this file run serveAndHandOver in this process, with a notify socket
// of their own in place of systemd's: it takes the connections that FDSTORE=1 sends,
// and answers BARRIER=1, as systemd does. The next instance is a second server that
// gets those connections back.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice"
	"socket-dice/internal/stagetest"
)

// fakeNotify is a notify socket: stored gets each connection sent with FDSTORE=1.
type fakeNotify struct {
	stored chan *os.File
	msgs   chan string
}

// newFakeNotify listens on a notify socket and sets NOTIFY_SOCKET to it.
func newFakeNotify(t *testing.T) *fakeNotify {
	addr := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", addr)
	n := &fakeNotify{stored: make(chan *os.File, 16), msgs: make(chan string, 64)}
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(4*16))
		for {
			nb, noob, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var fds []int
			cmsgs, _ := syscall.ParseSocketControlMessage(oob[:noob])
			for _, m := range cmsgs {
				got, _ := syscall.ParseUnixRights(&m)
				fds = append(fds, got...)
			}
			msg := string(buf[:nb])
			n.msgs <- msg
			for _, fd := range fds {
				if strings.Contains(msg, "FDSTORE=1") && strings.Contains(msg, "FDNAME=keepalive") {
					n.stored <- os.NewFile(uintptr(fd), "keepalive")
				} else {
					syscall.Close(fd) // BARRIER=1: systemd closes the pipe once it got here.
				}
			}
		}
	}()
	return n
}

// next waits for the next stored connection.
func (n *fakeNotify) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case f := <-n.stored:
		defer f.Close()
		c, err := net.FileConn(f)
		require.NoError(t, err)
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection was stored within 10 s")
		return nil
	}
}

// server is an instance: serveAndHandOver on a handler of its own (whose Rolls tell
// which instance answered), with the fd store of NOTIFY_SOCKET. stop ends it as
// systemctl stop and restart do, idle as its idle timer does; accepted gets each
// connection it accepts.
type server struct {
	h          *dice.Handler
	stop, idle func()
	accepted   chan net.Conn
	done       chan error
}

func startServer(t *testing.T, ln net.Listener, taken ...net.Conn) *server {
	t.Helper()
	store, err := openFDStore(false)
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &server{h: &dice.Handler{Log: log}, accepted: make(chan net.Conn, 16),
		done: make(chan error, 1)}
	ctx, stop := context.WithCancelCause(context.Background())
	s.stop, s.idle = func() { stop(nil) }, func() { stop(errIdle) }
	t.Cleanup(s.stop)
	srv := dice.NewServer(s.h, log)
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		if state == http.StateNew {
			s.accepted <- c
		}
	}
	go func() { s.done <- serveAndHandOver(ctx, srv, ln, taken, store) }()
	return s
}

// exited waits for serveAndHandOver to return.
func (s *server) exited(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop within 10 s")
		return nil
	}
}

// roll sends GET /roll?count=n on c (all of it, or all but the last line when
// partial) and, unless partial, reads the answer and returns how many rolls it has.
func roll(t *testing.T, c net.Conn, r *bufio.Reader, n int) int {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err := fmt.Fprintf(c, "GET /roll?count=%d HTTP/1.1\r\nHost: dice\r\n\r\n", n)
	require.NoError(t, err)
	return answer(t, r)
}

func answer(t *testing.T, r *bufio.Reader) int {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var a dice.Answer
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&a))
	return len(a.Rolls)
}

// readByServer: the bytes c sent have reached the server's socket (nothing waits
// for an ACK), and the server process has read them all (none waits in its socket).
func readByServer(c net.Conn) bool {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	client := fmt.Sprintf(":%04X", c.LocalAddr().(*net.TCPAddr).Port)
	server := fmt.Sprintf(":%04X", c.RemoteAddr().(*net.TCPAddr).Port)
	var sent, unread string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) < 5:
		case strings.HasSuffix(f[1], client) && strings.HasSuffix(f[2], server):
			sent, _, _ = strings.Cut(f[4], ":") // tx_queue: not yet acknowledged
		case strings.HasSuffix(f[1], server) && strings.HasSuffix(f[2], client):
			_, unread, _ = strings.Cut(f[4], ":") // rx_queue: not yet read
		}
	}
	return sent == "00000000" && unread == "00000000"
}

// TestIdleConnectionGoesToTheNextInstance: at the stop, a kept-alive connection
// waiting for its next request is stored, not closed; the next instance answers on it.
func TestIdleConnectionGoesToTheNextInstance(t *testing.T) {
	notify := newFakeNotify(t)
	ln := stagetest.TCPListener(t)
	first := startServer(t, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	assert.Equal(t, 1, roll(t, c, r, 1))

	first.stop()
	kept := notify.next(t)
	require.NoError(t, first.exited(t))
	assert.Equal(t, c.LocalAddr().String(), kept.RemoteAddr().String(), "the client's connection")
	assert.Contains(t, <-notify.msgs, "FDSTORE=1")
	assert.Equal(t, "BARRIER=1", <-notify.msgs, "the barrier comes last, before the exit")

	second := startServer(t, stagetest.TCPListener(t), kept)
	assert.Equal(t, 2, roll(t, c, r, 2), "the same connection, answered after the stop")
	assert.Equal(t, int64(1), first.h.Rolls())
	assert.Equal(t, int64(1), second.h.Rolls(), "by the next instance")

	second.stop()
	kept = notify.next(t)
	require.NoError(t, second.exited(t))
	third := startServer(t, stagetest.TCPListener(t), kept)
	assert.Equal(t, 3, roll(t, c, r, 3), "and after the next stop")
	assert.Equal(t, int64(1), third.h.Rolls())
}

// TestARequestBegunAtTheStopIsAnsweredOnce: at the stop, a connection whose next
// request has begun to arrive (net/http has read part of it) is not stored with that
// part lost: the instance that read it answers it, once, and stores the connection
// after the answer. Connection b, idle, is stored first: the stop is under way while
// a's request is incomplete. The cases differ in how the request began: after the
// last answer, or sent together with the request before it (pipelined), when
// net/http reads it into its buffer before the connection is idle.
func TestARequestBegunAtTheStopIsAnsweredOnce(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		t.Run(map[bool]string{false: "after the answer", true: "pipelined"}[pipelined],
			func(t *testing.T) {
				notify := newFakeNotify(t)
				ln := stagetest.TCPListener(t)
				first := startServer(t, ln)
				a, err := net.Dial("tcp", ln.Addr().String())
				require.NoError(t, err)
				defer a.Close()
				ra := bufio.NewReader(a)
				b, err := net.Dial("tcp", ln.Addr().String())
				require.NoError(t, err)
				defer b.Close()
				rb := bufio.NewReader(b)
				assert.Equal(t, 1, roll(t, b, rb, 1))

				// a sends all of its request for 2 rolls but the last line.
				const begun = "GET /roll?count=2 HTTP/1.1\r\nHost: dice\r\n"
				require.NoError(t, a.SetDeadline(time.Now().Add(10*time.Second)))
				if pipelined {
					_, err = fmt.Fprint(a, "GET /roll?count=1 HTTP/1.1\r\nHost: dice\r\n\r\n"+begun)
					require.NoError(t, err)
					assert.Equal(t, 1, answer(t, ra))
				} else {
					assert.Equal(t, 1, roll(t, a, ra, 1))
					_, err = fmt.Fprint(a, begun)
					require.NoError(t, err)
				}
				require.Eventually(t, func() bool { return readByServer(a) }, 10*time.Second,
					time.Millisecond, "the server reads what a sent")

				first.stop()
				kept := []net.Conn{notify.next(t)}
				assert.Equal(t, b.LocalAddr().String(), kept[0].RemoteAddr().String(),
					"b is stored, the stop is under way")
				_, err = fmt.Fprint(a, "\r\n")
				require.NoError(t, err)
				assert.Equal(t, 2, answer(t, ra), "the request begun is answered")
				assert.Equal(t, int64(3), first.h.Rolls(), "by the instance that read it")
				kept = append(kept, notify.next(t))
				assert.Equal(t, a.LocalAddr().String(), kept[1].RemoteAddr().String())
				require.NoError(t, first.exited(t))

				second := startServer(t, stagetest.TCPListener(t), kept...)
				// Had the request for 2 been answered twice, this would read the second.
				assert.Equal(t, 3, roll(t, a, ra, 3), "a's next answer is its next request's")
				assert.Equal(t, 4, roll(t, b, rb, 4))
				assert.Equal(t, int64(2), second.h.Rolls(), "both answered by the next instance")
			})
	}
}

// TestAnIdleExitStoresNothing: no start follows an idle exit, so systemd would close
// whatever it stored. A connection accepted as the idle timer fired, before its
// request came, is answered and closed, as stage 03 does; nothing goes to the store.
func TestAnIdleExitStoresNothing(t *testing.T) {
	notify := newFakeNotify(t)
	ln := stagetest.TCPListener(t)
	s := startServer(t, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	<-s.accepted
	s.idle()
	r := bufio.NewReader(c)
	assert.Equal(t, 2, roll(t, c, r, 2), "answered by the instance that exits")
	_, err = r.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "then closed")
	require.NoError(t, s.exited(t))
	assert.Empty(t, notify.stored, "nothing stored")
}

// TestWithoutAStoreTheStopClosesIdleConnections: not started by systemd (no
// NOTIFY_SOCKET), there is nowhere to keep them; the stop closes them, as stage 03's.
func TestWithoutAStoreTheStopClosesIdleConnections(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	ln := stagetest.TCPListener(t)
	first := startServer(t, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	assert.Equal(t, 1, roll(t, c, r, 1))
	first.stop()
	require.NoError(t, first.exited(t))
	_, err = r.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the server closed the idle connection")
}
