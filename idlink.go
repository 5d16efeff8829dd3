// Package idlink is the root of the idlink module: importing it registers
// the idlink Caddy app and handlers, so that
//
//	xcaddy build --with github.com/idlink/idlink=./
//
// builds a Caddy with them. The code is in ./caddymodule.
package idlink

import (
	// Registers the idlink app, handlers and Caddyfile syntax.
	_ "github.com/idlink/idlink/caddymodule"
)
