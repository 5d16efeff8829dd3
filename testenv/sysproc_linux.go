//go:build linux

package testenv

import "syscall"

// sysProcAttr puts a child in its own process group (so that the whole group
// can be signalled) and asks the kernel to SIGKILL it when the test binary
// dies, even if the test's cleanups never run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
