package store

import (
	"embed"

	"github.com/redis/go-redis/v9"
)

//go:embed lua/*.lua
var luaFiles embed.FS

func script(name string) *redis.Script {
	src, err := luaFiles.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic("idlink: missing Lua script " + name)
	}
	return redis.NewScript(string(src))
}

// The scripts, loaded once. Each runs with EVALSHA and falls back to EVAL
// (redis.Script.Run), and every key it touches comes through KEYS and
// shares one hash tag.
var (
	resolveScript           = script("resolve")
	installCreateScript     = script("install_create")
	userGetScript           = script("user_get")
	linkLockScript          = script("link_lock")
	linkClaimScript         = script("link_claim")
	linkAdoptScript         = script("link_adopt")
	linkMoveScript          = script("link_move")
	linkFinishScript        = script("link_finish")
	fetchEventsScript       = script("events_fetch")
	ackEventScript          = script("events_ack")
	rescheduleEventScript   = script("events_reschedule")
	deadletterEventScript   = script("events_deadletter")
	replayDeadlettersScript = script("events_replay")
	maintainOutboxScript    = script("events_maintain")
)
