// Package dice is the part every stage shares: rolling dice, the HTTP handler that
// answers GET /roll with JSON, its errors, and an http.Server with sane timeouts.
//
// The stages differ only in where their listener comes from and when they exit;
// none of that lives here.
package dice

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
)

// The allowed ranges of the query parameters.
const (
	MinSides, MaxSides = 2, 1000
	MinCount, MaxCount = 1, 100
)

// Roll rolls count dice with the given number of sides and returns each face, 1..sides.
// It uses math/rand/v2: dice are not secrets, and its per-goroutine ChaCha8 source is
// fast, safe for concurrent use and needs no error handling, unlike crypto/rand.
func Roll(sides, count int) []int {
	rolls := make([]int, count)
	for i := range rolls {
		rolls[i] = rand.IntN(sides) + 1
	}
	return rolls
}

// Params is a parsed /roll query.
type Params struct {
	Sides, Count int
	// Detailed is true when the query named sides or count: the answer then lists
	// every roll, not only their sum.
	Detailed bool
}

// ParseParams checks a /roll query: sides (2..1000, default 6) and count (1..100,
// default 1), each given at most once, nothing else. Its error is meant for the
// client: it names the parameter and the allowed range.
func ParseParams(q url.Values) (Params, error) {
	p := Params{Sides: 6, Count: 1}
	// Sorted, so that a query with two mistakes always gets the same error.
	for _, name := range slices.Sorted(maps.Keys(q)) {
		values := q[name]
		var target *int
		var lo, hi int
		switch name {
		case "sides":
			target, lo, hi = &p.Sides, MinSides, MaxSides
		case "count":
			target, lo, hi = &p.Count, MinCount, MaxCount
		default:
			return Params{}, fmt.Errorf("unknown parameter %s: allowed are sides (%d to %d) "+
				"and count (%d to %d)", quote(name), MinSides, MaxSides, MinCount, MaxCount)
		}
		if len(values) != 1 {
			return Params{}, fmt.Errorf("%s given %d times: give it once, a whole number "+
				"from %d to %d", name, len(values), lo, hi)
		}
		n, ok := parseInt(values[0])
		if !ok || n < lo || n > hi {
			return Params{}, fmt.Errorf("%s must be a whole number from %d to %d, got %s",
				name, lo, hi, quote(values[0]))
		}
		*target = n
		p.Detailed = true
	}
	return p, nil
}

// parseInt accepts only plain decimal digits: no sign, no spaces, no exponent,
// and at most 9 of them, so that the value cannot overflow.
func parseInt(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// quote shows a client's input in an error, cut short so that a huge parameter
// does not come back as a huge error.
func quote(s string) string {
	const max = 32
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
