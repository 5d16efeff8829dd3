package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
)

func init() { registerSubcommand(rolloutCommand) }

// Rollout verdicts.
const (
	verdictSafe  = "safe to enforce"
	verdictCheck = "check clients"
	verdictNone  = "no requests"
)

func rolloutCommand() *cobra.Command {
	var metricsURL string
	cmd := &cobra.Command{
		Use:   "rollout [--metrics-url http://localhost:2019/metrics]",
		Short: "Show, per tenant and platform, how many requests enforce mode would refuse",
		Long: `Reads idlink_requests_total from a running Caddy's metrics endpoint and prints,
per tenant and platform, the requests counted since Caddy started, how many
report mode let through that enforce would refuse (would_refuse), their share,
and a verdict: "safe to enforce" when none would be refused, "check clients"
otherwise. The counts are totals since the process started; for a recent
window, use the PromQL in the README's "Rollout metrics".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := readRollout(metricsURL)
			if err != nil {
				return err
			}
			return printRollout(cmd.OutOrStdout(), rows)
		},
	}
	cmd.Flags().StringVar(&metricsURL, "metrics-url", "http://localhost:2019/metrics", "the metrics endpoint of the running Caddy")
	return cmd
}

// rolloutRow is one tenant and platform's requests.
type rolloutRow struct {
	tenant, platform            string
	total, wouldRefuse, refused float64
}

// verdict says whether enforce would refuse any request of the row.
func (r rolloutRow) verdict() string {
	switch {
	case r.total == 0:
		return verdictNone
	case r.wouldRefuse == 0:
		return verdictSafe
	}
	return verdictCheck
}

// readRollout scrapes url and sums idlink_requests_total by tenant and
// platform.
func readRollout(url string) ([]rolloutRow, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, fmt.Errorf("reading metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading metrics: %s answered %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %v", err)
	}
	f := families["idlink_requests_total"]
	if f == nil {
		return nil, fmt.Errorf("%s has no idlink_requests_total: is it the metrics of a Caddy running idlink, and has it served a request?", url)
	}
	byKey := map[[2]string]*rolloutRow{}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		key := [2]string{labels["tenant"], labels["platform"]}
		row := byKey[key]
		if row == nil {
			row = &rolloutRow{tenant: key[0], platform: key[1]}
			byKey[key] = row
		}
		v := m.GetCounter().GetValue()
		row.total += v
		switch labels["outcome"] {
		case outcomeWouldRefuse:
			row.wouldRefuse += v
		case outcomeVerified, outcomeUnverified:
		default:
			row.refused += v
		}
	}
	rows := make([]rolloutRow, 0, len(byKey))
	for _, r := range byKey {
		rows = append(rows, *r)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].tenant != rows[j].tenant {
			return rows[i].tenant < rows[j].tenant
		}
		return rows[i].platform < rows[j].platform
	})
	return rows, nil
}

func printRollout(w io.Writer, rows []rolloutRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tPLATFORM\tREQUESTS\tREFUSED\tWOULD_REFUSE\tSHARE\tVERDICT")
	for _, r := range rows {
		share := 0.0
		if r.total > 0 {
			share = 100 * r.wouldRefuse / r.total
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%.2f%%\t%s\n", r.tenant, r.platform, r.total, r.refused, r.wouldRefuse, share, r.verdict())
	}
	return tw.Flush()
}
