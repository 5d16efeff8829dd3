package store

import (
	"embed"

	"github.com/redis/go-redis/v9"
)

//go:embed lua/*.lua
var luaFiles embed.FS

func script(name string) *redis.Script {
	return newScript(name, luaSource(name))
}

// scriptWith is a script with libraries of shared functions prepended, in
// the order given.
func scriptWith(name string, libs ...string) *redis.Script {
	src := ""
	for _, lib := range libs {
		src += luaSource(lib)
	}
	return newScript(name, src+luaSource(name))
}

func luaSource(name string) string {
	src, err := luaFiles.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic("idlink: missing Lua script " + name)
	}
	return string(src)
}

// scriptSources holds the source of every script the package runs, by
// name. The tests check that each one ran on a Redis Cluster (proof that
// it is single-slot) and that every file of lua/ is part of one: build
// every script with newScript (script and scriptWith do).
var scriptSources = map[string]string{}

// newScript registers a script's source and returns the script.
func newScript(name, src string) *redis.Script {
	scriptSources[name] = src
	return redis.NewScript(src)
}

// The scripts, loaded once. Each runs with EVALSHA and falls back to EVAL
// (redis.Script.Run), and every key it touches comes through KEYS and
// shares one hash tag.
var (
	resolveScript           = scriptWith("resolve", "ext_lib")
	installCreateScript     = script("install_create")
	installExpiryScript     = script("install_expiry")
	installDropScript       = script("install_drop")
	userExpiryScript        = scriptWith("user_expiry", "ext_lib")
	userGetScript           = script("user_get")
	linkLockScript          = script("link_lock")
	linkClaimScript         = scriptWith("link_claim", "ext_lib")
	linkAdoptScript         = script("link_adopt")
	linkMoveScript          = script("link_move")
	linkFinishScript        = script("link_finish")
	fetchEventsScript       = script("events_fetch")
	ackEventScript          = script("events_ack")
	rescheduleEventScript   = script("events_reschedule")
	deadletterEventScript   = script("events_deadletter")
	replayDeadlettersScript = script("events_replay")
	maintainOutboxScript    = script("events_maintain")

	sessionAdmitScript    = scriptWith("session_admit", "sessions_lib", "jsonobj_lib")
	sessionTouchScript    = scriptWith("session_touch", "sessions_lib")
	sessionEndScript      = scriptWith("session_end", "sessions_lib")
	sessionActivityScript = scriptWith("session_activity", "sessions_lib")
	failureCountScript    = scriptWith("failure_count", "window_lib")
	failureSessionScript  = scriptWith("failure_session", "sessions_lib", "window_lib")
	userSessionsScript    = scriptWith("user_sessions", "sessions_lib")
	userSessionsEndScript = scriptWith("user_sessions_end", "sessions_lib")
	userClaimsScript      = scriptWith("user_claims", "jsonobj_lib")
)
