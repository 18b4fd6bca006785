package dice

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Answer is the body of a successful roll: {"result": 4}, or with sides or count
// given, {"result": 11, "rolls": [5, 6]}.
type Answer struct {
	Result int   `json:"result"`
	Rolls  []int `json:"rolls,omitempty"`
}

// Error is the body of every error: {"error": "what is wrong and what is allowed"}.
type Error struct {
	Error string `json:"error"`
}

// Handler answers GET /roll, and every other request with a JSON error.
// Every response carries Dice-Pid, the pid of the process that served it.
type Handler struct {
	// Log gets one line per request; nil means slog.Default().
	Log *slog.Logger

	rolls atomic.Int64
}

// Rolls is the number of successful rolls served so far.
func (h *Handler) Rolls() int64 { return h.rolls.Load() }

var pid = strconv.Itoa(os.Getpid())

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	status, body := h.answer(r)
	w.Header().Set("Dice-Pid", pid)
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", "GET, HEAD")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body) // A write error means the client is gone.
	h.logger().Info("request", "method", r.Method, "uri", r.URL.RequestURI(),
		"status", status, "remote", r.RemoteAddr, "duration", time.Since(start))
}

// answer decides the status and body of a response.
func (h *Handler) answer(r *http.Request) (int, any) {
	if r.URL.Path != "/roll" {
		return http.StatusNotFound, Error{fmt.Sprintf("no such path %s: try GET /roll",
			quote(r.URL.Path))}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return http.StatusMethodNotAllowed, Error{fmt.Sprintf(
			"method %s is not allowed on /roll: use GET", r.Method)}
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return http.StatusBadRequest, Error{"malformed query string: use " +
			"/roll?sides=S&count=C with sides 2 to 1000 and count 1 to 100"}
	}
	p, err := ParseParams(q)
	if err != nil {
		return http.StatusBadRequest, Error{err.Error()}
	}
	rolls := Roll(p.Sides, p.Count)
	h.rolls.Add(1)
	a := Answer{}
	for _, n := range rolls {
		a.Result += n
	}
	if p.Detailed {
		a.Rolls = rolls
	}
	return http.StatusOK, a
}

func (h *Handler) logger() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.Default()
}
