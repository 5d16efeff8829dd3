// Command caddy is Caddy with its standard modules and idlink.
//
//	go run ./cmd/caddy run --config Caddyfile.example
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// idlink.
	_ "github.com/idlink/idlink"
)

func main() {
	caddycmd.Main()
}
