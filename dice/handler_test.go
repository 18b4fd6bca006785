package dice

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
)

func quietHandler() *Handler {
	return &Handler{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func TestRollAnswersJSON(t *testing.T) {
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
	rec := httptest.NewRecorder()
	quietHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/roll?sides=20&count=3", nil))

	require.Equal(t, http.StatusOK, rec.Code)
	var a Answer
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

// BadRequests is every kind of bad request the service must refuse with a 4xx JSON
// error that says what is allowed. The e2e tests send the same table over the wire.
var BadRequests = []struct {
	Name, Method, Target string
	Status               int
	Mentions             string // a piece of the error message
}{
	{"sides not a number", "GET", "/roll?sides=abc", 400, "sides must be a whole number from 2 to 1000"},
	{"count not a number", "GET", "/roll?count=three", 400, "count must be a whole number from 1 to 100"},
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
	{"unknown parameter", "GET", "/roll?side=6", 400, "allowed are sides (2 to 1000) and count (1 to 100)"},
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

func TestBadRequests(t *testing.T) {
	srv := httptest.NewServer(quietHandler())
	defer srv.Close()
	require.GreaterOrEqual(t, len(BadRequests), 20)
	for _, tt := range BadRequests {
		t.Run(tt.Name, func(t *testing.T) {
			req, err := http.NewRequest(tt.Method, srv.URL+tt.Target, nil)
			require.NoError(t, err)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()

			assert.Equal(t, tt.Status, resp.StatusCode)
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			assert.NotEmpty(t, resp.Header.Get("Dice-Pid"))
			var e Error
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
			assert.Contains(t, e.Error, tt.Mentions)
			if tt.Status == http.StatusMethodNotAllowed {
				assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
			}
		})
	}
}

// TestBrokenClientsDoNotCrashTheServer sends what no HTTP client should, through
// NewServer, and checks that the server still answers afterwards.
func TestBrokenClientsDoNotCrashTheServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := NewServer(quietHandler(), log)
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
