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
	return newScript(name, string(src))
}

// scriptSources holds the source of every script the package runs, by
// name. The tests check that each one ran on a Redis Cluster (proof that
// it is single-slot) and that every file of lua/ is part of one: build
// every script with newScript.
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
	resolveScript = script("resolve")
)
