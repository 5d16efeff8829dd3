package caddymodule

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/rs/cors"
)

// defaultCORSMaxAge is how long a browser may cache a preflight answer.
const defaultCORSMaxAge = 10 * time.Minute

// CORS lets web pages on other origins call the tenant's API (a web SDK
// on https://app.example.com calling POST /idlink/sessions on
// https://api.example.com): idlink answers the preflights of its API and
// marks its answers for the allowed origins. Credentials are allowed, so
// origins are listed one by one: there is no wildcard. The protected
// site's own preflights still pass to the upstream untouched.
type CORS struct {
	// Origins are the allowed origins, scheme://host[:port] each.
	Origins []string `json:"origins"`
	// MaxAge is how long a browser may cache a preflight. Default: 10m.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	origins []string   // Origins normalised (checkOrigin)
	handler *cors.Cors // answers the API's preflights
}

// corsRequestHeaders are what the SDK sends: every credential header,
// Authorization (contact tokens) and Content-Type (JSON bodies). API keys
// (X-Api-Key) are for servers and are not allowed from pages.
var corsRequestHeaders = []string{
	hdrExternalID, hdrExternalIDSig, hdrPlatform, hdrUserEmail, hdrUserEmailSig, hdrUserPhone,
	hdrUserPhoneSig, hdrInstallID, hdrSessionID, hdrContactToken, hdrSSOToken, hdrAuthorization,
	"Content-Type",
}

// corsExposedHeaders are the answer headers a page needs to read.
var corsExposedHeaders = []string{"WWW-Authenticate", "Retry-After"}

// provision checks the origins and builds the handler of the API's CORS,
// once per tenant (every API mount of the tenant shares it).
func (c *CORS) provision() error {
	if c == nil {
		return nil
	}
	if len(c.Origins) == 0 {
		return fmt.Errorf("cors needs at least one origin")
	}
	c.origins = make([]string, 0, len(c.Origins))
	for _, o := range c.Origins {
		norm, err := checkOrigin(o)
		if err != nil {
			return err
		}
		c.origins = append(c.origins, norm)
	}
	if c.MaxAge == 0 {
		c.MaxAge = caddy.Duration(defaultCORSMaxAge)
	}
	if c.MaxAge < 0 {
		return fmt.Errorf("cors max_age must not be negative")
	}
	c.handler = cors.New(cors.Options{
		AllowedOrigins:   c.origins,
		AllowedMethods:   []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete},
		AllowedHeaders:   corsRequestHeaders,
		ExposedHeaders:   corsExposedHeaders,
		AllowCredentials: true,
		MaxAge:           int(time.Duration(c.MaxAge) / time.Second),
	})
	return nil
}

// allows reports whether origin (lower case) is one of the origins.
func (c *CORS) allows(origin string) bool {
	return c != nil && slices.Contains(c.origins, origin)
}

// checkOrigin accepts scheme://host[:port] (http or https) and answers it
// in lower case, as browsers send it.
func checkOrigin(o string) (string, error) {
	if strings.Contains(o, "*") {
		return "", fmt.Errorf("cors origin %q: no wildcard (credentials are allowed, so every origin is listed)", o)
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("cors origin %q must be scheme://host[:port], e.g. https://app.example.com", o)
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}

// parseCORS parses
//
//	cors {
//		origins <origin>...
//		max_age <duration>
//	}
func parseCORS(d *caddyfile.Dispenser) (*CORS, error) {
	c := new(CORS)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			for _, o := range args {
				if _, err := checkOrigin(o); err != nil {
					return nil, d.Err(err.Error())
				}
			}
			c.Origins = append(c.Origins, args...)
		case "max_age":
			if err := durationArg(d, &c.MaxAge); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("unrecognized cors subdirective '%s' (origins, max_age)", d.Val())
		}
	}
	if len(c.Origins) == 0 {
		return nil, d.Err("cors needs at least one origin: origins <origin>...")
	}
	return c, nil
}
