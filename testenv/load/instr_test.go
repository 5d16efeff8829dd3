package load

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idlink/idlink/testenv"
)

// TestInstructions counts the CPU instructions Caddy executes per request
// (valgrind's callgrind, which counts every instruction the process runs:
// there are no hardware counters to read on a shared VM, and wall-clock
// ratios vary by ±10% there). One Caddy process serves the same upstream
// through a plain reverse_proxy site and an idlink + reverse_proxy site;
// both get the same request headers, for three warm paths: an HMAC-signed
// external id, an idlink-issued contact token (ES256) and a session id.
//
//	IDLINK_MEASURE=1 go test ./testenv/load -run TestInstructions -v -count=1
//
// It runs only with IDLINK_MEASURE=1 (Caddy under valgrind starts in tens
// of seconds). Each window is: zero the counters (callgrind_control -z),
// send -instr.requests requests over one keep-alive connection, dump the
// counters (callgrind_control -d); windows alternate plain and idlink per
// path for -instr.rounds rounds and the figure is the median. The dumps
// stay in IDLINK_MEASURE_DIR when it is set, for callgrind_annotate.
func TestInstructions(t *testing.T) {
	if os.Getenv("IDLINK_MEASURE") == "" {
		t.Skip("set IDLINK_MEASURE=1 to count instructions under valgrind")
	}
	vg, err := exec.LookPath("valgrind")
	if err != nil {
		t.Fatal("valgrind is not on PATH")
	}
	ctl, err := exec.LookPath("callgrind_control")
	if err != nil {
		t.Fatal("callgrind_control is not on PATH")
	}
	requests, rounds := envInt(t, "IDLINK_MEASURE_REQUESTS", 400), envInt(t, "IDLINK_MEASURE_ROUNDS", 3)
	outDir := os.Getenv("IDLINK_MEASURE_DIR")
	if outDir == "" {
		outDir = t.TempDir()
	}

	b := newBench(t)
	up := testenv.StartUpstream(t)
	dir := t.TempDir()
	plain, guarded, admin := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	cfg := b.caddyfile(fmt.Sprintf("admin 127.0.0.1:%d", admin), plain, guarded, up.Addr(), "")
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(outDir, "callgrind.out")
	cmd := exec.Command(vg, "--tool=callgrind", "--callgrind-out-file="+out,
		testenv.BuildCaddy(t), "run", "--config", file, "--adapter", "caddyfile")
	// Callgrind fails an assertion on the signals of Go's asynchronous
	// preemption; goroutines still yield at function calls without it.
	cmd.Env = append(os.Environ(), "GODEBUG=asyncpreemptoff=1",
		"XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	logs, err := os.Create(filepath.Join(dir, "valgrind.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	plainURL := fmt.Sprintf("http://127.0.0.1:%d/", plain)
	idlinkURL := fmt.Sprintf("http://127.0.0.1:%d/", guarded)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := client.Get(plainURL)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logs.Name())
			t.Fatalf("Caddy under valgrind did not answer: %v\n%s", err, b)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// A login gives the session id and the contact token of the session.
	paths := paths(t, client, idlinkURL, []string{"instr-user"})
	send := func(url string, headers [][2]string, n int) {
		for range n {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			for _, h := range headers {
				req.Header.Set(h[0], h[1])
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %d", url, resp.StatusCode)
			}
		}
	}
	for _, p := range paths { // warm the caches, the connection pools and the code
		send(plainURL, p.creds[0], 100)
		send(idlinkURL, p.creds[0], 100)
	}
	if rec, ok := up.Last(); !ok || rec.Header.Get("X-Identity-Source") != "session" {
		t.Fatalf("the upstream did not see the session identity: %+v", rec.Header)
	}

	dump := 0
	window := func(url string, headers [][2]string) float64 {
		control(t, ctl, cmd.Process.Pid, "-z")
		send(url, headers, requests)
		control(t, ctl, cmd.Process.Pid, "-d")
		dump++
		return float64(summary(t, fmt.Sprintf("%s.%d", out, dump))) / float64(requests)
	}
	t.Logf("%d requests per window, %d rounds, store: %s, dumps: %s.N", requests, rounds, b.redisLine, out)
	t.Logf("%-14s %12s %12s %8s", "path", "plain", "idlink", "ratio")
	for _, p := range paths {
		var pl, id, ratios []float64
		for r := range rounds {
			var a, b float64
			var da, db int // the dumps of each
			if r%2 == 0 {
				a, b = window(plainURL, p.creds[0]), window(idlinkURL, p.creds[0])
				da, db = dump-1, dump
			} else {
				b, a = window(idlinkURL, p.creds[0]), window(plainURL, p.creds[0])
				da, db = dump, dump-1
			}
			pl, id, ratios = append(pl, a), append(id, b), append(ratios, b/a)
			t.Logf("  %s round %d: plain %.0f (dump %d), idlink %.0f (dump %d) instructions/request", p.name, r+1, a, da, b, db)
		}
		t.Logf("%-14s %12.0f %12.0f %8.3f", p.name, medianOf(pl), medianOf(id), medianOf(ratios))
		fmt.Printf("INSTR path=%q plain=%.0f idlink=%.0f ratio=%.3f\n", p.name, medianOf(pl), medianOf(id), medianOf(ratios))
	}
}

// control sends a command to the callgrind of pid and waits for it.
func control(t *testing.T, ctl string, pid int, arg string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, ctl, arg, strconv.Itoa(pid)).CombinedOutput(); err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("callgrind_control %s: %v\n%s", arg, err, out)
	}
}

// summary is the instruction count (Ir) of a callgrind dump.
func summary(t *testing.T, file string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "summary: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("%s: no summary line", file)
	return 0
}

func medianOf(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: not a positive number", name, v)
	}
	return n
}
