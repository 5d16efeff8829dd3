package testenv

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { Main(m) }

func TestSelectedDeployments(t *testing.T) {
	cases := []struct {
		env     string
		want    []string
		wantErr string
	}{
		{"", []string{"standalone", "cluster", "sentinel"}, ""},
		{"cluster", []string{"cluster"}, ""},
		{" sentinel , standalone,sentinel,", []string{"sentinel", "standalone"}, ""},
		{"embedded,standalone", []string{"embedded", "standalone"}, ""},
		{"standalone,mongodb", nil, `unknown deployment "mongodb"`},
		{",", nil, "names no deployment"},
	}
	for _, c := range cases {
		t.Setenv(DeploymentsEnv, c.env)
		got, err := selectedDeployments()
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%q: err = %v, want %q", c.env, err, c.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v, %v; want %v", c.env, got, err, c.want)
		}
	}
}

// dbSize counts the keys on every master of d.
func dbSize(t *testing.T, d Deployment) int64 {
	t.Helper()
	var n atomic.Int64
	err := d.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
		k, err := c.DBSize(ctx).Result()
		n.Add(k)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n.Load()
}

// TestForEachDeployment runs twice over every deployment: each run must
// find it empty (the previous one leaves keys behind), reach it through
// its URL in the form go-redis parses, and, on the cluster, see CROSSSLOT.
func TestForEachDeployment(t *testing.T) {
	for round := range 2 {
		var seen []string
		ForEachDeployment(t, func(t *testing.T, d Deployment) {
			seen = append(seen, d.Name)
			if d.Name == DeployEmbedded {
				if d.URL != "" || d.Client != nil {
					t.Fatalf("embedded: %+v", d)
				}
				return
			}
			ctx := context.Background()
			if n := dbSize(t, d); n != 0 {
				t.Fatalf("round %d: the deployment holds %d keys: not emptied for this test", round, n)
			}
			var fromURL redis.UniversalClient
			var err error
			switch d.Name {
			case DeployStandalone:
				var o *redis.Options
				if o, err = redis.ParseURL(d.URL); err == nil {
					fromURL = redis.NewClient(o)
				}
			case DeployCluster:
				var o *redis.ClusterOptions
				if o, err = redis.ParseClusterURL(d.URL); err == nil {
					fromURL = redis.NewClusterClient(o)
				}
			case DeploySentinel:
				var o *redis.FailoverOptions
				if o, err = redis.ParseFailoverURL(d.URL); err == nil {
					fromURL = redis.NewFailoverClient(o)
				}
			}
			if err != nil {
				t.Fatalf("URL %q: %v", d.URL, err)
			}
			defer fromURL.Close()
			if _, isCluster := d.Client.(*redis.ClusterClient); isCluster != (d.Name == DeployCluster) {
				t.Fatalf("%s: Client is a %T", d.Name, d.Client)
			}
			for _, c := range []redis.UniversalClient{d.Client, fromURL} {
				got, err := multiKeyScript.Run(ctx, c, []string{"{t:1}:a", "{t:1}:b"}, "x", "y").StringSlice()
				if err != nil || !slices.Equal(got, []string{"x", "y"}) {
					t.Fatalf("script = %v, %v", got, err)
				}
			}
			_, err = multiKeyScript.Run(ctx, d.Client, []string{"{t:1}:a", "{t:2}:b"}, "x", "y").Result()
			if d.Name == DeployCluster && (err == nil || !strings.Contains(err.Error(), "CROSSSLOT")) {
				t.Fatalf("cross-slot script on the cluster: %v, want CROSSSLOT", err)
			}
			if d.Name != DeployCluster && err != nil {
				t.Fatalf("script: %v", err)
			}
			if dbSize(t, d) == 0 {
				t.Fatal("the writes are not visible")
			}
			// A subtest of the holder shares the deployment, not emptied.
			t.Run("nested", func(t *testing.T) {
				again := UseDeployment(t, d.Name)
				if again.URL != d.URL && d.Name != DeployStandalone {
					t.Fatalf("nested use got %s, want %s", again.URL, d.URL)
				}
				if d.Name != DeployStandalone && dbSize(t, again) == 0 {
					t.Fatal("a nested use emptied the holder's deployment")
				}
			})
		})
		if want := DeploymentNames(t); !slices.Equal(seen, want) {
			t.Fatalf("ran on %v, want %v", seen, want)
		}
	}
}

// TestSharedLeaseIsExclusive: parallel tests asking for the shared cluster
// get it one after the other.
func TestSharedLeaseIsExclusive(t *testing.T) {
	if !deploymentSelected(DeployCluster) {
		t.Skip(DeploymentsEnv + " does not select the cluster")
	}
	var inside, overlaps atomic.Int32
	for _, name := range []string{"a", "b", "c"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := UseDeployment(t, DeployCluster)
			if inside.Add(1) > 1 {
				overlaps.Add(1)
			}
			defer inside.Add(-1)
			// Hold the lease for a while so that overlaps would show.
			if err := d.Client.Set(context.Background(), "{lease}:"+name, "x", 0).Err(); err != nil {
				t.Error(err)
			}
			time.Sleep(30 * time.Millisecond)
			if n := dbSize(t, d); n != 1 {
				t.Errorf("%d keys: another test wrote meanwhile, or the deployment was not emptied", n)
			}
		})
	}
	t.Cleanup(func() {
		if overlaps.Load() > 0 {
			t.Errorf("%d tests held the shared cluster at the same time", overlaps.Load())
		}
	})
}

// TestScriptsRanOnCluster: the final check sees scripts that ran on the
// shared cluster and on a cluster of a test's own (once it is stopped),
// and names those that did not.
func TestScriptsRanOnCluster(t *testing.T) {
	if !deploymentSelected(DeployCluster) {
		t.Skip(DeploymentsEnv + " does not select the cluster")
	}
	onShared := "return redis.call('SET', KEYS[1], ARGV[1]) -- shared " + t.Name()
	onPrivate := "return redis.call('SET', KEYS[1], ARGV[1]) -- private " + t.Name()
	never := "return 'never run' -- " + t.Name()
	check := ScriptsRanOnCluster(map[string]string{"on-shared": onShared, "on-private": onPrivate, "never": never})
	shas := map[string]string{
		"on-shared":  redis.NewScript(onShared).Hash(),
		"on-private": redis.NewScript(onPrivate).Hash(),
		"never":      redis.NewScript(never).Hash(),
	}
	t.Run("shared", func(t *testing.T) {
		d := UseDeployment(t, DeployCluster)
		if err := redis.NewScript(onShared).Run(context.Background(), d.Client, []string{"{s}:k"}, "v").Err(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("private", func(t *testing.T) {
		c := StartCluster(t, 3, 0)
		if err := redis.NewScript(onPrivate).Run(context.Background(), c.Client(), []string{"{s}:k"}, "v").Err(); err != nil {
			t.Fatal(err)
		}
	})
	if err := recordScripts(sharedCluster.running().(clusterInstance).c); err != nil {
		t.Fatal(err)
	}
	if missing := scriptsNotSeen(shas); !slices.Equal(missing, []string{"never"}) {
		t.Fatalf("not seen: %v, want [never]", missing)
	}
	// The check itself (a -run filter makes it a no-op in this run).
	if partialRun() == "" {
		if err := check(); err == nil || !strings.Contains(err.Error(), "never") || strings.Contains(err.Error(), "on-") {
			t.Fatalf("check: %v", err)
		}
	}
}
