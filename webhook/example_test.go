package webhook_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/idlink/idlink/webhook"
)

// A receiver: read the raw body (bounded), verify it, then decode it, and
// deduplicate on the event id (deliveries are at least once).
func ExampleVerify() {
	secrets := strings.Split(os.Getenv("IDLINK_WEBHOOK_SECRETS"), ",") // old,new while rotating
	http.HandleFunc("POST /idlink-events", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := webhook.Verify(r.Header.Get(webhook.SignatureHeader), body, secrets, 5*time.Minute, time.Now()); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var ev webhook.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		// ... store ev.ID as seen, act on ev.Type / ev.Data ...
		w.WriteHeader(http.StatusNoContent)
	})
}
