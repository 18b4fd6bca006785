//go:build e2e

package main

// The tests in this file run units/01-always-on under a real systemd user manager
// of their own (package systemdtest), on a free port instead of 8080.

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socket-dice/dice/dicetest"
	"socket-dice/internal/systemdtest"
)

// TestUnderSystemd runs units/01-always-on/dice.service under a real systemd user
// manager: the service is active and answers, from its MainPID, and
// `systemctl stop` ends the process.
func TestUnderSystemd(t *testing.T) {
	m := systemdtest.New(t)
	port := systemdtest.FreePort(t)
	bin := systemdtest.BuildStage(t, "01-always-on")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	require.NoError(t, m.InstallStage("01-always-on", bin, "", "-addr", addr))
	m.MustSystemctl(t, "start", "dice.service")
	m.WaitProp(t, "dice.service", "ActiveState", "active", 5*time.Second)
	pid := m.MainPID(t, "dice.service")
	require.Positive(t, pid)

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/roll")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "the service listens on its port")
	status, answeredBy, a := dicetest.Roll(t, http.DefaultClient, base)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, pid, answeredBy, "Dice-Pid is the unit's MainPID")
	assert.GreaterOrEqual(t, a.Result, 1)
	assert.LessOrEqual(t, a.Result, 6)
	t.Run("bad requests", func(t *testing.T) { dicetest.SendBadRequests(t, base) })
	assert.Equal(t, pid, m.MainPID(t, "dice.service"), "bad requests did not end the service")

	m.MustSystemctl(t, "stop", "dice.service")
	assert.Equal(t, "inactive", m.Show(t, "dice.service", "ActiveState"))
	assert.Equal(t, "success", m.Show(t, "dice.service", "Result"), "exit status 0 on SIGTERM")
	assert.NoDirExists(t, fmt.Sprintf("/proc/%d", pid), "systemctl stop ended the process")
}
