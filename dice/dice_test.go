package dice

import (
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRollStaysInRange(t *testing.T) {
	t.Parallel()
	for _, sides := range []int{MinSides, 6, 20, MaxSides} {
		rolls := Roll(sides, MaxCount)
		require.Len(t, rolls, MaxCount)
		for _, n := range rolls {
			assert.GreaterOrEqual(t, n, 1)
			assert.LessOrEqual(t, n, sides)
		}
	}
}

func TestRollShowsEveryFace(t *testing.T) {
	t.Parallel()
	seen := map[int]bool{}
	for range 100 {
		for _, n := range Roll(6, MaxCount) {
			seen[n] = true
		}
	}
	assert.Len(t, seen, 6, "10000 rolls of a d6 should show all six faces")
}

func TestParseParams(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		query string
		want  Params
	}{
		{"defaults", "", Params{Sides: 6, Count: 1}},
		{"sides only", "sides=20", Params{Sides: 20, Count: 1, Detailed: true}},
		{"count only", "count=3", Params{Sides: 6, Count: 3, Detailed: true}},
		{"both", "sides=20&count=3", Params{Sides: 20, Count: 3, Detailed: true}},
		{"lowest", "sides=2&count=1", Params{Sides: 2, Count: 1, Detailed: true}},
		{"highest", "sides=1000&count=100", Params{Sides: 1000, Count: 100, Detailed: true}},
		{"leading zero", "sides=020", Params{Sides: 20, Count: 1, Detailed: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			require.NoError(t, err)
			got, err := ParseParams(q)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// FuzzParseParams checks that no query crashes the parser, and that whatever it
// accepts is in range and whatever it refuses is explained.
func FuzzParseParams(f *testing.F) {
	for _, seed := range []string{"", "sides=20&count=3", "sides=0", "count=-1",
		"sides=99999999999999999999", "sides=6.5", "sides=1e3", "count=%00", "x=1",
		"sides=2&sides=3", "sides=+6", "sides= 6", "sides=0x10", "count=٣"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, query string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return // The handler answers 400 before ParseParams sees it.
		}
		p, err := ParseParams(q)
		if err != nil {
			assert.NotEmpty(t, err.Error())
			assert.Equal(t, Params{}, p)
			return
		}
		assert.GreaterOrEqual(t, p.Sides, MinSides)
		assert.LessOrEqual(t, p.Sides, MaxSides)
		assert.GreaterOrEqual(t, p.Count, MinCount)
		assert.LessOrEqual(t, p.Count, MaxCount)
	})
}
