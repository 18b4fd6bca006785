package dice_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice"
	"socket-dice/dice/dicetest"
)

func quietHandler() *dice.Handler {
	return &dice.Handler{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func TestRollAnswersJSON(t *testing.T) {
	t.Parallel()
	h := quietHandler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/roll", nil))

	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	assert.Equal(t, strconv.Itoa(os.Getpid()), rec.Header().Get("Dice-Pid"))
	var body map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
	assert.Len(t, body, 1, "plain /roll answers only {\"result\": N}: %s", rec.Body)
	n, ok := body["result"].(float64)
	require.True(t, ok, "result is a number: %s", rec.Body)
	assert.GreaterOrEqual(t, n, 1.0)
	assert.LessOrEqual(t, n, 6.0)
	assert.EqualValues(t, 1, h.Rolls())
}

func TestRollWithSidesAndCount(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	quietHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/roll?sides=20&count=3", nil))

	require.Equal(t, http.StatusOK, rec.Code)
	var a dice.Answer
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &a))
	require.Len(t, a.Rolls, 3)
	sum := 0
	for _, n := range a.Rolls {
		assert.GreaterOrEqual(t, n, 1)
		assert.LessOrEqual(t, n, 20)
		sum += n
	}
	assert.Equal(t, sum, a.Result)
}

func TestHeadHasNoBody(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(quietHandler())
	defer srv.Close()
	resp, err := http.Head(srv.URL + "/roll")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Empty(t, body)
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(quietHandler())
	defer srv.Close()
	require.GreaterOrEqual(t, len(dicetest.BadRequests), 20)
	dicetest.SendBadRequests(t, srv.URL)
}

// TestBrokenClientsDoNotCrashTheServer sends what no HTTP client should, through
// NewServer, and checks that the server still answers afterwards.
func TestBrokenClientsDoNotCrashTheServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := dice.NewServer(quietHandler(), log)
	go srv.Serve(ln) //nolint:errcheck // Closed below.
	defer srv.Close()

	tests := []struct {
		name, request string
		status        int
	}{
		{"garbage", "\x00\x01\x02 not http at all\r\n\r\n", 400},
		{"no version", "GET /roll\r\n\r\n", 400},
		{"bad header line", "GET /roll HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400},
		{"2 MiB header", "GET /roll HTTP/1.1\r\nHost: x\r\nX-Big: " +
			strings.Repeat("a", 2<<20) + "\r\n\r\n", 431},
		{"unsupported version", "GET /roll HTTP/9.9\r\nHost: x\r\n\r\n", 505},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
			_, _ = io.WriteString(c, tt.request) // The server may hang up mid-write.
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tt.status, resp.StatusCode)
		})
	}
	resp, err := http.Get(fmt.Sprintf("http://%s/roll", ln.Addr()))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the server still answers")
}
