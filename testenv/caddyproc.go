package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// modulePath is the module whose ./cmd/caddy BuildCaddy builds.
	modulePath = "github.com/idlink/idlink"
	// caddyPkg is the package of idlink's Caddy binary.
	caddyPkg = modulePath + "/cmd/caddy"
	// buildTimeout bounds `go build` of the Caddy binary.
	buildTimeout = 10 * time.Minute
	// processStartTimeout bounds the wait for a Caddy process to answer.
	processStartTimeout = 15 * time.Second
	// processStopGrace is how long Stop waits after SIGTERM before SIGKILL.
	processStopGrace = 5 * time.Second
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// BuildCaddy builds idlink's Caddy binary (go build of
// github.com/idlink/idlink/cmd/caddy, in the repository found by walking up
// from the working directory to idlink's go.mod) and returns its path. It
// builds once per test binary: later calls return the same path (or fail
// the same way). The binary is written to
// $TMPDIR/idlink-testenv-<uid>/caddy-<pid>, and binaries left there by test
// binaries that are no longer running are removed, so repeated runs do not
// fill the disk.
func BuildCaddy(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { buildPath, buildErr = buildCaddy() })
	if buildErr != nil {
		t.Fatalf("testenv: building %s: %v", caddyPkg, buildErr)
	}
	return buildPath
}

func buildCaddy() (string, error) { return buildBinary(caddyPkg, "caddy") }

// buildBinary builds pkg (a package of idlink's module) into
// $TMPDIR/idlink-testenv-<uid>/<name>-<pid>, after removing the <name>-*
// binaries of test binaries that no longer run.
func buildBinary(pkg, name string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is not on PATH: %w", err)
	}
	dir := filepath.Join(os.TempDir(), "idlink-testenv-"+strconv.Itoa(os.Getuid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	removeStaleBinaries(dir, name+"-")
	out := filepath.Join(dir, name+"-"+strconv.Itoa(os.Getpid()))

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	output, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build -o %s %s (in %s): %w\n%s", out, pkg, root, err, output)
	}
	return out, nil
}

// removeStaleBinaries removes the binaries <prefix><pid> in dir built by
// test binaries that no longer run.
func removeStaleBinaries(dir, prefix string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		pidStr, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// repoRoot walks up from the working directory to the folder whose go.mod
// declares idlink's module.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; {
		if goModDeclares(filepath.Join(dir, "go.mod"), modulePath) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s in %s or above", modulePath, wd)
		}
		dir = parent
	}
}

func goModDeclares(path, module string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`) == module
		}
	}
	return false
}

// Process is a Caddy running as a separate process of idlink's own binary
// (see BuildCaddy), started by StartCaddyProcess. Use it to run several Caddy
// instances at once, e.g. sharing one Redis.
type Process struct {
	p *proc
}

// StartCaddyProcess builds idlink's Caddy binary once per test binary (see
// BuildCaddy), writes caddyfile to a file in t.TempDir() and runs
// `<bin> run --config <file> --adapter caddyfile`. The process gets
// XDG_DATA_HOME and XDG_CONFIG_HOME in t.TempDir() (so Caddy's storage and
// autosaved config stay out of the user's home) and CADDY_ADMIN set to a
// free 127.0.0.1 port (so that several instances do not all claim
// localhost:2019; an "admin" global option in the Caddyfile takes
// precedence). Its stdout and stderr are kept for Logs.
//
// StartCaddyProcess waits until waitURL answers with any HTTP status (at
// most 15 s; on failure the test fails with the process's output) and stops
// the process when the test ends.
func StartCaddyProcess(t testing.TB, caddyfile string, waitURL string) *Process {
	t.Helper()
	bin := BuildCaddy(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(caddyfile), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return startCaddyBinary(t, "caddy", bin, dir, nil, waitURL, "run", "--config", file, "--adapter", "caddyfile")
}

// startCaddyBinary runs bin, a Caddy main, with args in the working
// directory wd, its storage and config under t.TempDir(), CADDY_ADMIN on a
// free port and the extra environment variables env, waits until waitURL
// answers (see StartCaddyProcess) and stops it when the test ends.
func startCaddyBinary(t testing.TB, name, bin, wd string, env []string, waitURL string, args ...string) *Process {
	t.Helper()
	dir := t.TempDir()
	env = append(append(os.Environ(),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"CADDY_ADMIN="+hostPort(FreePort(t)),
	), env...)
	p, err := startProc(name, wd, "", env, bin, args...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cp := &Process{p: p}
	t.Cleanup(func() {
		if err := p.terminate(processStopGrace); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	client := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // local test server
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	err = waitFor(processStartTimeout, 50*time.Millisecond, p, func() (bool, string) {
		resp, err := client.Get(waitURL)
		if err != nil {
			return false, err.Error()
		}
		_ = resp.Body.Close()
		return true, ""
	})
	if err != nil {
		t.Fatalf("testenv: %s did not answer %s: %v\n%s", name, waitURL, err, p.logs())
	}
	return cp
}

// Stop stops the process: SIGTERM, then SIGKILL if it has not exited
// after 5 s. It waits for the process; calling it again does nothing.
func (p *Process) Stop() {
	_ = p.p.terminate(processStopGrace)
}

// Logs returns everything the process wrote to stdout and stderr so far.
func (p *Process) Logs() string { return p.p.out.String() }

// PID is the process id of the running Caddy, e.g. to read its memory
// from /proc/<pid>/status.
func (p *Process) PID() int { return p.p.cmd.Process.Pid }
