package caddymodule_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"
)

// LinkResult is idlink's answer to a link.
type LinkResult struct {
	UserID     string `json:"user_id"`
	Created    bool   `json:"created"`
	MergedFrom string `json:"merged_from,omitempty"`
}

// ErrLinkRefused is a link idlink will never accept as sent (unknown
// install, another app's install, bad external id, bad key).
var ErrLinkRefused = errors.New("link refused")

// LinkInstall tells idlink that externalID (your user id) uses the device
// whose SDK reported installID. It retries 409 link_in_progress and 503
// store_unavailable after Retry-After: a link is idempotent, so retrying
// is always safe, and a retry of an interrupted link completes it.
func LinkInstall(ctx context.Context, base, apiKey, installID, externalID string) (LinkResult, error) {
	body, _ := json.Marshal(map[string]string{"external_id": externalID})
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost,
			base+"/idlink/users/"+installID+"/link", bytes.NewReader(body))
		if err != nil {
			return LinkResult{}, err
		}
		req.Header.Set("Authorization", "Bearer "+apiKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return LinkResult{}, err
		}
		var out struct {
			LinkResult
			Error, Message string
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return out.LinkResult, nil
		case (resp.StatusCode == http.StatusConflict || resp.StatusCode == http.StatusServiceUnavailable) && attempt < 5:
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			select {
			case <-time.After(time.Duration(max(wait, 1)) * time.Second):
			case <-ctx.Done():
				return LinkResult{}, ctx.Err()
			}
		case resp.StatusCode >= 400 && resp.StatusCode < 500:
			return LinkResult{}, fmt.Errorf("%w: %d %s: %s", ErrLinkRefused, resp.StatusCode, out.Error, out.Message)
		default:
			return LinkResult{}, fmt.Errorf("idlink: %d %s", resp.StatusCode, out.Error)
		}
	}
}

// The customer backend's side of user linking: after your app sent you
// the install id of a user who just logged in.
func Example_linkInstall() {
	res, err := LinkInstall(context.Background(), "https://api.example.com",
		os.Getenv("IDLINK_API_KEY"), "i_0bghw2koYOEKbDx6laA2Ehb04a", "alice")
	if err != nil {
		fmt.Println("link failed:", err) // tell the SDK: linkFailed()
		return
	}
	if res.MergedFrom != "" {
		// The device's anonymous history belongs to res.UserID now.
		fmt.Println("merge what you keyed by", res.MergedFrom, "into", res.UserID)
	}
	fmt.Println("linked to", res.UserID) // store it with your user; tell the SDK: linkSuccess()
}
