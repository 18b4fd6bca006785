// Package dicetest is the service contract of every stage, as tests check it over
// the wire: a roll answered 200 with Dice-Pid, and every bad request answered with a
// 4xx JSON error that says what is allowed. It sits beside package dice as
// net/http/httptest sits beside net/http.
package dicetest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice"
)

// NewConn is a client that opens a new connection for every request and closes it
// after the answer, as curl does. Its timeout is generous: a test that floods a
// service waits for answers rather than failing on a slow one.
var NewConn = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// Roll is one GET /roll through client, with its status, Dice-Pid and answer.
func Roll(t testing.TB, client *http.Client, base string) (status, pid int, a dice.Answer) {
	t.Helper()
	resp, err := client.Get(base + "/roll")
	require.NoError(t, err)
	defer resp.Body.Close()
	pid, err = strconv.Atoi(resp.Header.Get("Dice-Pid"))
	require.NoError(t, err, "Dice-Pid header")
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&a))
	}
	return resp.StatusCode, pid, a
}

// TryRoll is one GET /roll that must be answered 200 with a result from 1 to 6 and a
// Dice-Pid, which it returns. Unlike Roll it does not fail the test, so a spawned
// goroutine may call it.
func TryRoll(client *http.Client, base string) (pid int, err error) {
	resp, err := client.Get(base + "/roll")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var a dice.Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return 0, fmt.Errorf("status %d, body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || a.Result < 1 || a.Result > 6 {
		return 0, fmt.Errorf("status %d, result %d", resp.StatusCode, a.Result)
	}
	return strconv.Atoi(resp.Header.Get("Dice-Pid"))
}

// BadRequests is every kind of bad request the service must refuse with a 4xx JSON
// error that says what is allowed. SendBadRequests sends them.
var BadRequests = []struct {
	Name, Method, Target string
	Status               int
	Mentions             string // a piece of the error message
}{
	{"sides not a number", "GET", "/roll?sides=abc", 400,
		"sides must be a whole number from 2 to 1000"},
	{"count not a number", "GET", "/roll?count=three", 400,
		"count must be a whole number from 1 to 100"},
	{"sides zero", "GET", "/roll?sides=0", 400, "from 2 to 1000"},
	{"sides one", "GET", "/roll?sides=1", 400, "from 2 to 1000"},
	{"count zero", "GET", "/roll?count=0", 400, "from 1 to 100"},
	{"sides negative", "GET", "/roll?sides=-6", 400, "from 2 to 1000"},
	{"count negative", "GET", "/roll?count=-1", 400, "from 1 to 100"},
	{"sides too large", "GET", "/roll?sides=1001", 400, "from 2 to 1000"},
	{"count too large", "GET", "/roll?count=101", 400, "from 1 to 100"},
	{"sides overflowing int64", "GET", "/roll?sides=99999999999999999999999", 400, "from 2 to 1000"},
	{"count overflowing int32", "GET", "/roll?count=4294967297", 400, "from 1 to 100"},
	{"sides float", "GET", "/roll?sides=6.0", 400, "whole number"},
	{"sides exponent", "GET", "/roll?sides=1e2", 400, "whole number"},
	{"sides hex", "GET", "/roll?sides=0x10", 400, "whole number"},
	{"sides with plus sign", "GET", "/roll?sides=%2B6", 400, "whole number"},
	{"sides with space", "GET", "/roll?sides=%206", 400, "whole number"},
	{"sides empty", "GET", "/roll?sides=", 400, "from 2 to 1000"},
	{"count empty", "GET", "/roll?count", 400, "from 1 to 100"},
	{"sides repeated", "GET", "/roll?sides=6&sides=8", 400, "sides given 2 times"},
	{"count repeated", "GET", "/roll?count=1&count=1", 400, "count given 2 times"},
	{"unknown parameter", "GET", "/roll?side=6", 400,
		"allowed are sides (2 to 1000) and count (1 to 100)"},
	{"malformed escape", "GET", "/roll?sides=%zz", 400, "malformed query"},
	{"semicolon separator", "GET", "/roll?sides=6;count=2", 400, "malformed query"},
	{"non-ascii digits", "GET", "/roll?count=%D9%A3", 400, "whole number"},
	{"huge value", "GET", "/roll?sides=" + strings.Repeat("9", 4000), 400, "from 2 to 1000"},
	{"unknown path", "GET", "/rolls", 404, "try GET /roll"},
	{"root path", "GET", "/", 404, "try GET /roll"},
	{"POST", "POST", "/roll", 405, "use GET"},
	{"DELETE", "DELETE", "/roll", 405, "use GET"},
	{"PUT with a valid query", "PUT", "/roll?sides=6", 405, "use GET"},
}

// SendBadRequests sends every one of BadRequests to the service at base
// ("http://127.0.0.1:8080") and checks each answer: the expected 4xx status, a
// JSON error that mentions what is allowed, Dice-Pid, and Allow on a 405.
func SendBadRequests(t *testing.T, base string) {
	t.Helper()
	for _, tt := range BadRequests {
		t.Run(tt.Name, func(t *testing.T) {
			req, err := http.NewRequest(tt.Method, base+tt.Target, nil)
			require.NoError(t, err)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()

			assert.Equal(t, tt.Status, resp.StatusCode)
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			assert.NotEmpty(t, resp.Header.Get("Dice-Pid"))
			var e dice.Error
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
			assert.Contains(t, e.Error, tt.Mentions)
			if tt.Status == http.StatusMethodNotAllowed {
				assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
			}
		})
	}
}

// KeepAliveRolls sends n requests one after another over the one connection c,
// GET /roll?count=1, 2, ..., n, checks that each is answered with that many rolls,
// and returns the Dice-Pid of every answer.
func KeepAliveRolls(t testing.TB, c net.Conn, n int) []string {
	t.Helper()
	r := bufio.NewReader(c)
	pids := make([]string, 0, n)
	for i := range n {
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		_, err := fmt.Fprintf(c, "GET /roll?count=%d HTTP/1.1\r\nHost: dice\r\n\r\n", i+1)
		require.NoError(t, err)
		resp, err := http.ReadResponse(r, nil)
		require.NoError(t, err, "request %d on the kept-alive connection", i)
		var a dice.Answer
		err = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		require.NoError(t, err, "request %d", i)
		assert.Len(t, a.Rolls, i+1)
		pids = append(pids, resp.Header.Get("Dice-Pid"))
	}
	return pids
}

// Load calls GET /roll at base from keepAlive clients that reuse their connection and
// from fresh clients that open a new one for every request, until stop is called.
// Answered counts the requests answered so far; stop returns the failures (a second
// call too).
func Load(base string, keepAlive, fresh int) (answered func() int64,
	stop func() []error) {
	var (
		ok     atomic.Int64
		mu     sync.Mutex
		failed []error
		wg     sync.WaitGroup
	)
	done := make(chan struct{})
	for i := range keepAlive + fresh {
		client := NewConn
		if i < keepAlive {
			client = &http.Client{Timeout: NewConn.Timeout, Transport: &http.Transport{}}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := TryRoll(client, base); err != nil {
					mu.Lock()
					failed = append(failed, err)
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	return ok.Load, sync.OnceValue(func() []error {
		close(done)
		wg.Wait()
		return failed
	})
}

// RollAndWaitForClose sends one GET /roll with "Connection: close" and returns the
// Dice-Pid and when the server closed the connection: the idle timer starts then.
func RollAndWaitForClose(base string) (pid int, closed time.Time, err error) {
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		return 0, time.Time{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		return 0, time.Time{}, err
	}
	_, err = fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\nConnection: close\r\n\r\n")
	if err != nil {
		return 0, time.Time{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, time.Time{}, err
	}
	_, err = io.Copy(io.Discard, resp.Body) // Up to the server's FIN.
	closed = time.Now()
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, closed, fmt.Errorf("status %d, %v", resp.StatusCode, err)
	}
	pid, err = strconv.Atoi(resp.Header.Get("Dice-Pid"))
	return pid, closed, err
}

// Burst calls roll n times at once, from n goroutines, at the moment at, and returns
// what each call returned. roll may be TryRoll on a client, with the base URL bound.
func Burst[P any](n int, at time.Time, roll func() (P, error)) ([]P, []error) {
	pids, errs := make([]P, n), make([]error, n)
	fire := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-fire
			pids[i], errs[i] = roll()
		}()
	}
	time.Sleep(time.Until(at))
	close(fire)
	wg.Wait()
	return pids, errs
}

// Kept is what KeptAlive's clients saw: requests answered and failed, the new
// connections they had to open after a failure, and the longest a request waited.
type Kept struct {
	Answered, Failed, Reconnects int64
	LongestWait                  time.Duration
	Errors                       []error // the first few failures
}

// KeptAlive starts n clients that each open one connection to addr and send GET /roll
// on it, one request after the other, until stop is called. A client never retries:
// a request that fails (the connection closed or reset, a bad answer) counts as
// failed, and the client opens a new connection for the next one (a reconnect), as
// it does after an answer that closes the connection (Connection: close).
// answered counts the requests answered so far.
func KeptAlive(addr string, n int) (answered func() int64, stop func() Kept) {
	var (
		mu   sync.Mutex
		kept Kept
		ok   atomic.Int64
		wg   sync.WaitGroup
	)
	done := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var r *bufio.Reader
			for first := true; ; first = false {
				select {
				case <-done:
					if c != nil {
						c.Close()
					}
					return
				default:
				}
				var err error
				if c == nil {
					if c, err = net.DialTimeout("tcp", addr, 30*time.Second); err == nil {
						r = bufio.NewReader(c)
					}
					if !first {
						mu.Lock()
						kept.Reconnects++
						mu.Unlock()
					}
				}
				start := time.Now()
				closed := false
				if err == nil {
					closed, err = keptRoll(c, r)
				}
				mu.Lock()
				kept.LongestWait = max(kept.LongestWait, time.Since(start))
				if err != nil {
					kept.Failed++
					if len(kept.Errors) < 5 {
						kept.Errors = append(kept.Errors, err)
					}
				}
				mu.Unlock()
				if err == nil {
					ok.Add(1)
				}
				if (err != nil || closed) && c != nil {
					c.Close()
					c = nil
				}
			}
		}()
	}
	return ok.Load, func() Kept {
		close(done)
		wg.Wait()
		kept.Answered = ok.Load()
		return kept
	}
}

// keptRoll is one GET /roll on the connection c, read through r; closed tells that
// the server closes the connection after this answer.
func keptRoll(c net.Conn, r *bufio.Reader) (closed bool, err error) {
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return false, err
	}
	if _, err := fmt.Fprint(c, "GET /roll HTTP/1.1\r\nHost: dice\r\n\r\n"); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var a dice.Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK || a.Result < 1 || a.Result > 6 {
		return false, fmt.Errorf("status %d, result %d", resp.StatusCode, a.Result)
	}
	return resp.Close, nil
}
