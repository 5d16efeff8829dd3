package testenv

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// TestProxy: bytes go both ways through the proxy; Cut closes the open
// connection (both ends see it) and refuses new ones.
func TestProxy(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	upstreamEnd := make(chan error, 1)
	go func() { // an echo server, line by line, that reports how it ended
		c, err := ln.Accept()
		if err != nil {
			upstreamEnd <- err
			return
		}
		defer c.Close()
		rd := bufio.NewReader(c)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				upstreamEnd <- err
				return
			}
			if _, err := c.Write([]byte("echo " + line)); err != nil {
				upstreamEnd <- err
				return
			}
		}
	}()

	p := StartProxy(t, ln.Addr().String())
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	for _, msg := range []string{"one\n", "two\n"} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got, err := rd.ReadString('\n'); err != nil || got != "echo "+msg {
			t.Fatalf("got %q, %v", got, err)
		}
	}

	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := rd.ReadString('\n'); err != io.EOF {
		t.Fatalf("client side after Cut: %v, want EOF", err)
	}
	select {
	case err := <-upstreamEnd:
		if err != io.EOF {
			t.Fatalf("upstream side after Cut: %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream connection is still open after Cut")
	}
	if c2, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c2.Close()
		t.Fatal("a new connection was accepted after Cut")
	}
	p.Cut() // again (the test's cleanup does too): no effect
}
