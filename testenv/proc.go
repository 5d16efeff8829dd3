package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// startTimeout bounds every wait for a server to come up.
	startTimeout = 10 * time.Second
	// exitTimeout bounds the wait for a killed process to be reaped.
	exitTimeout = 10 * time.Second
	// maxLogTail is how much of a log is quoted in a failure message.
	maxLogTail = 8 << 10
)

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is one child process started by this package.
type proc struct {
	name    string // for messages, e.g. "redis-server 127.0.0.1:1234"
	cmd     *exec.Cmd
	out     *syncBuffer // stdout and stderr
	logFile string      // the server's own log file, if any
	done    chan struct{}
	waitErr error // valid once done is closed
}

// startProc starts bin with args in its own process group, with Pdeathsig
// set, and reaps it in the background.
func startProc(name, dir, logFile string, env []string, bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	out := &syncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	// A forked grandchild holding the output pipe must not block Wait.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: out, logFile: logFile, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended and been reaped.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process group of p (which includes any children
// it forked), unless p has already been reaped.
func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return errors.New(p.name + " has exited")
	}
	err := syscall.Kill(-p.pid(), sig)
	if err != nil {
		// Fall back to the process alone.
		err = p.cmd.Process.Signal(sig)
	}
	return err
}

// kill SIGKILLs the process group and waits until the process is reaped.
func (p *proc) kill() error {
	if p.exited() {
		return nil
	}
	_ = p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(exitTimeout):
		return fmt.Errorf("%s (pid %d) did not exit %v after SIGKILL", p.name, p.pid(), exitTimeout)
	}
}

// terminate sends SIGTERM, waits up to grace, then SIGKILLs.
func (p *proc) terminate(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.signal(syscall.SIGCONT) // a stopped process cannot handle SIGTERM
	_ = p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		// Anything the process forked must go too.
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		return nil
	case <-time.After(grace):
	}
	return p.kill()
}

// logs returns the process's output and the tail of its log file.
func (p *proc) logs() string {
	var b strings.Builder
	if out := p.out.String(); out != "" {
		b.WriteString("--- output of " + p.name + " ---\n")
		b.WriteString(tail(out))
		if !strings.HasSuffix(out, "\n") {
			b.WriteString("\n")
		}
	}
	if p.logFile != "" {
		data, err := os.ReadFile(p.logFile)
		switch {
		case err != nil:
			fmt.Fprintf(&b, "--- log file %s: %v ---\n", p.logFile, err)
		default:
			b.WriteString("--- log file " + p.logFile + " ---\n")
			b.WriteString(tail(string(data)))
		}
	}
	if p.exited() {
		fmt.Fprintf(&b, "--- %s exited: %v ---\n", p.name, p.waitErr)
	}
	return b.String()
}

func tail(s string) string {
	if len(s) <= maxLogTail {
		return s
	}
	return "[...]\n" + s[len(s)-maxLogTail:]
}

// waitFor polls cond every interval until it returns true, p exits (if p is
// not nil) or timeout passes. The error carries cond's last message.
func waitFor(timeout, interval time.Duration, p *proc, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return nil
		}
		last = msg
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before it was ready (last check: %s)", p.name, last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v (last check: %s)", timeout, last)
		}
		time.Sleep(interval)
	}
}
