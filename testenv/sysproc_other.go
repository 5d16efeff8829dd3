//go:build unix && !linux

package testenv

import "syscall"

// sysProcAttr puts a child in its own process group so that the whole group
// can be signalled. Pdeathsig only exists on Linux.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
