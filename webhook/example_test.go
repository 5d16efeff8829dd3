package webhook_test

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/idlink/idlink/webhook"
)

// A receiver of the Standard Webhooks format (the default): read the raw
// body (bounded), verify it with the webhook-* headers, then decode it, and
// deduplicate on the event id (deliveries are at least once).
func ExampleVerifyStandard() {
	secrets := strings.Split(os.Getenv("IDLINK_WEBHOOK_SECRETS"), ",") // whsec_…; old,new while rotating
	for _, s := range secrets {
		if _, err := webhook.DecodeSecret(s); err != nil {
			log.Fatal("IDLINK_WEBHOOK_SECRETS: ", err)
		}
	}
	http.HandleFunc("POST /idlink-events", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := webhook.VerifyStandard(r.Header, body, secrets, 5*time.Minute, time.Now()); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var ev webhook.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		// ... store ev.ID (= webhook-id) as seen, act on ev.Type / ev.Data ...
		w.WriteHeader(http.StatusNoContent)
	})
}

// A receiver of the idlink format (format idlink).
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
