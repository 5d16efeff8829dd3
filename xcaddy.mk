# Build a Caddy binary with idlink.
#
#   make -f xcaddy.mk            # -> ./caddy
#   make -f xcaddy.mk OUT=/usr/local/bin/caddy
#
# With xcaddy installed (go install github.com/caddyserver/xcaddy/cmd/xcaddy@latest)
# it runs `xcaddy build $(CADDY_VERSION) --with github.com/idlink/idlink=./`, so you
# can add other plugins with XCADDY_WITH="--with github.com/x/y". Without xcaddy
# it falls back to `go build ./cmd/caddy` (Caddy's standard modules + idlink).

OUT           ?= ./caddy
CADDY_VERSION ?= v2.11.9
XCADDY_WITH   ?=
XCADDY        := $(shell command -v xcaddy 2>/dev/null)

.PHONY: build
build:
ifneq ($(XCADDY),)
	$(XCADDY) build $(CADDY_VERSION) --with github.com/idlink/idlink=./ $(XCADDY_WITH) --output $(OUT)
else
	@echo "xcaddy not found: building ./cmd/caddy with go build"
	go build -o $(OUT) ./cmd/caddy
endif
	$(OUT) list-modules | grep -E '^(idlink|http.handlers.idlink)'
