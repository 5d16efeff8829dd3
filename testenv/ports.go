package testenv

import (
	"fmt"
	"net"
	"sync"
	"testing"
)

var (
	portsMu sync.Mutex
	// portsGiven holds every port FreePort returned in this process, so that
	// two callers (or two nodes of one cluster) never get the same port while
	// neither has bound it yet.
	portsGiven = map[int]bool{}
)

// FreePort returns a TCP port on 127.0.0.1 that was free when asked: it
// listens on 127.0.0.1:0, reads the port the kernel chose and closes the
// listener. A port is never returned twice by one test binary. Another
// process may still take the port before the caller binds it; the Redis
// helpers of this package notice that and retry with new ports.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var lastErr error
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			lastErr = err
			continue
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if portsGiven[port] || port == 6379 {
			// 6379 is the machine's own Redis; never hand it out.
			continue
		}
		portsGiven[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("no free port on 127.0.0.1 found (last error: %v)", lastErr)
}

func hostPort(port int) string {
	return fmt.Sprintf("127.0.0.1:%d", port)
}
