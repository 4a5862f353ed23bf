// Package metrics shows what mflow does in Prometheus' text format, for /metrics: bytes to players and from
// upstreams, streams, upstream requests by outcome and status, first-byte and request times, the caches,
// the tasks and the connection budget, and each drive's refusals and limit. Labels are few and fixed:
// never a URL, a host or a GID; a drive is its registrable domain (115cdn.net), of the drives that refused
// something or taught a limit.
package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"

	vm "github.com/VictoriaMetrics/metrics"

	"mflow/internal/chunkcache"
	"mflow/internal/engine"
	"mflow/internal/play"
	"mflow/internal/task"
	"mflow/internal/upstream"
)

func init() { vm.ExposeMetadata(true) } // # HELP and # TYPE for every family

// Sources are what the metrics read. Any may be nil.
type Sources struct {
	Play   *play.Service
	Engine *engine.Engine
	Client *upstream.Client
	Tasks  *task.Registry
	Memory *chunkcache.Memory
	Disk   *chunkcache.Disk
}

// Metrics is mflow's metrics. Register Observe as the engine's Observe, and serve it at /metrics.
type Metrics struct {
	src Sources
	set *vm.Set

	requests  map[engine.RequestEnd]*vm.Counter // upstream requests by how they ended
	responses map[string]*vm.Counter            // by status class: 2xx … 5xx, or none
	received  *vm.Counter                       // body bytes taken from upstreams
	firstByte *vm.PrometheusHistogram           // seconds from a request to its answer
	took      *vm.PrometheusHistogram           // seconds from a request to its end
}

// requestEnds are the label values of mflow_upstream_requests_total.
var requestEnds = map[engine.RequestEnd]string{
	engine.EndedOK:        "ok",
	engine.EndedFailed:    "failed",
	engine.EndedReplaced:  "replaced",
	engine.EndedCancelled: "cancelled",
}

// statusClasses are the label values of mflow_upstream_responses_total.
var statusClasses = []string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// help is each family's HELP text.
var help = map[string]string{
	"mflow_player_bytes_total":                "Bytes written to players.",
	"mflow_upstream_bytes_total":              "Body bytes taken from upstreams.",
	"mflow_streams_active":                    "Streams playing now.",
	"mflow_streams_started_total":             "Streams started.",
	"mflow_plays_failed_total":                "Plays that failed, by the HTTP status their player got (2xx: cut after the first byte).",
	"mflow_upstream_requests_total":           "Upstream requests by how they ended: ok, failed (asked again or the stream failed), replaced (slow or stalled), cancelled (the stream ended first).",
	"mflow_upstream_responses_total":          "Upstream requests by the status class of their answer; none when no answer came.",
	"mflow_upstream_retries_total":            "Pieces asked again after a request failed.",
	"mflow_upstream_races_total":              "Fresh requests raced against a slow one.",
	"mflow_upstream_splits_total":             "Pieces split so an idle connection takes half.",
	"mflow_upstream_first_byte_seconds":       "Time from sending an upstream request to its answer.",
	"mflow_upstream_request_seconds":          "Time from sending an upstream request to its end.",
	"mflow_upstream_connections":              "Upstream requests holding a connection now, in all.",
	"mflow_upstream_busiest_host_connections": "Upstream requests holding a connection now to the busiest host.",
	"mflow_upstream_host_connections_limit":   "Requests one upstream host may have open at once (--host-connections).",
	"mflow_cache_hits_total":                  "Chunk cache lookups that found the chunk, by tier.",
	"mflow_cache_misses_total":                "Chunk cache lookups that did not, by tier.",
	"mflow_cache_bytes":                       "Bytes the chunk cache holds, by tier.",
	"mflow_tasks":                             "Tasks by status.",
	"mflow_tasks_available":                   "1 while tasks can be asked for and changed; 0 while their shared store (Redis) does not answer.",
	"mflow_drive_refusals_total":              "Upstream requests a drive refused (403, 429, 503 or a reset), by drive.",
	"mflow_drive_connections_limit":           "Connections a drive allows one file, learned from its refusals or known, by drive.",
	"mflow_memory_budget_bytes":               "What streams' read-ahead and the memory cache may hold together (--max-memory); 0 is no bound.",
	"mflow_memory_streams_bytes":              "Bytes the streams hold in chunk buffers now.",
	"mflow_memory_cache_room_bytes":           "What the memory cache may hold now: its --cache-size, or less while playing streams need the budget.",
	"mflow_readahead_withheld_bytes":          "Read-ahead the playing streams want beyond what the budget gives them now.",
}

// New returns the metrics of src.
func New(src Sources) *Metrics {
	m := &Metrics{src: src, set: vm.NewSet(), requests: map[engine.RequestEnd]*vm.Counter{}, responses: map[string]*vm.Counter{}}
	for o, name := range requestEnds {
		m.requests[o] = m.set.NewCounter(fmt.Sprintf(`mflow_upstream_requests_total{outcome=%q}`, name))
	}
	for _, class := range statusClasses {
		m.responses[class] = m.set.NewCounter(fmt.Sprintf(`mflow_upstream_responses_total{class=%q}`, class))
	}
	m.received = m.set.NewCounter("mflow_upstream_bytes_total")
	buckets := []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	m.firstByte = m.set.NewPrometheusHistogramExt("mflow_upstream_first_byte_seconds", buckets)
	m.took = m.set.NewPrometheusHistogramExt("mflow_upstream_request_seconds", buckets)
	m.set.RegisterMetricsWriter(m.writeSources)
	return m
}

// Observe counts one upstream request; it is the engine's Observe.
func (m *Metrics) Observe(d engine.RequestDone) {
	m.requests[d.End].Inc()
	class := "none"
	if d.Status >= 100 && d.Status < 600 {
		class = statusClasses[d.Status/100]
	}
	m.responses[class].Inc()
	m.received.Add(int(d.Bytes))
	if d.FirstByte > 0 {
		m.firstByte.Update(d.FirstByte.Seconds())
	}
	m.took.Update(d.Took.Seconds())
}

// writeSources writes what the sources count themselves, read at each scrape.
func (m *Metrics) writeSources(w io.Writer) {
	src := m.src
	if p := src.Play; p != nil {
		vm.WriteCounterUint64(w, "mflow_player_bytes_total", uint64(p.Counters.Sent.Load()))
		vm.WriteGaugeUint64(w, "mflow_streams_active", uint64(max(p.Counters.Active.Load(), 0)))
		vm.WriteCounterUint64(w, "mflow_streams_started_total", uint64(p.Counters.Started.Load()))
		failed := p.FailedByStatus()
		if len(failed) > 0 {
			family(w, "mflow_plays_failed_total", "counter", func(line func(labels string, v int64)) {
				for _, status := range slices.Sorted(maps.Keys(failed)) {
					line(fmt.Sprintf(`status="%d"`, status), failed[status])
				}
			})
		}
	}
	if e := src.Engine; e != nil {
		vm.WriteCounterUint64(w, "mflow_upstream_retries_total", uint64(e.Remedies.Retries.Load()))
		vm.WriteCounterUint64(w, "mflow_upstream_races_total", uint64(e.Remedies.Raced.Load()))
		vm.WriteCounterUint64(w, "mflow_upstream_splits_total", uint64(e.Remedies.Splits.Load()))
		vm.WriteGaugeUint64(w, "mflow_memory_budget_bytes", uint64(max(e.MaxMemory, 0)))
		vm.WriteGaugeUint64(w, "mflow_memory_streams_bytes", uint64(max(e.HeldBytes(), 0)))
		vm.WriteGaugeUint64(w, "mflow_readahead_withheld_bytes", uint64(max(e.Withheld(), 0)))
		if src.Memory != nil {
			vm.WriteGaugeUint64(w, "mflow_memory_cache_room_bytes", uint64(src.Memory.Room()))
		}
		if drives := e.Drives.States(); len(drives) > 0 {
			family(w, "mflow_drive_refusals_total", "counter", func(line func(labels string, v int64)) {
				for _, d := range drives {
					line(fmt.Sprintf(`drive=%q`, d.Drive), int64(d.Refusals))
				}
			})
			family(w, "mflow_drive_connections_limit", "gauge", func(line func(labels string, v int64)) {
				for _, d := range drives {
					line(fmt.Sprintf(`drive=%q`, d.Drive), int64(d.Limit))
				}
			})
		}
	}
	if c := src.Client; c != nil {
		total, busiest := c.InUse()
		vm.WriteGaugeUint64(w, "mflow_upstream_connections", uint64(total))
		vm.WriteGaugeUint64(w, "mflow_upstream_busiest_host_connections", uint64(busiest))
		vm.WriteGaugeUint64(w, "mflow_upstream_host_connections_limit", uint64(c.HostConnections()))
	}
	type tier struct {
		name     string
		counters *chunkcache.Lookups
		bytes    int64
	}
	var tiers []tier
	if src.Memory != nil {
		tiers = append(tiers, tier{"memory", &src.Memory.Lookups, src.Memory.Bytes()})
	}
	if src.Disk != nil {
		tiers = append(tiers, tier{"disk", &src.Disk.Lookups, src.Disk.Bytes()})
	}
	if len(tiers) > 0 {
		family(w, "mflow_cache_hits_total", "counter", func(line func(labels string, v int64)) {
			for _, t := range tiers {
				line(fmt.Sprintf(`tier=%q`, t.name), t.counters.Hits.Load())
			}
		})
		family(w, "mflow_cache_misses_total", "counter", func(line func(labels string, v int64)) {
			for _, t := range tiers {
				line(fmt.Sprintf(`tier=%q`, t.name), t.counters.Misses.Load())
			}
		})
		family(w, "mflow_cache_bytes", "gauge", func(line func(labels string, v int64)) {
			for _, t := range tiers {
				line(fmt.Sprintf(`tier=%q`, t.name), t.bytes)
			}
		})
	}
	if src.Tasks != nil {
		active, waiting, stopped := src.Tasks.Lists()
		counts := map[task.State]int64{}
		for _, list := range [][]task.View{active, waiting, stopped} {
			for _, v := range list {
				counts[v.State]++
			}
		}
		family(w, "mflow_tasks", "gauge", func(line func(labels string, v int64)) {
			for _, s := range []task.State{task.Active, task.Waiting, task.Paused, task.Removed, task.Failed} {
				line(fmt.Sprintf(`status=%q`, s), counts[s])
			}
		})
		available := int64(1)
		if src.Tasks.Ready() != nil {
			available = 0
		}
		vm.WriteGaugeUint64(w, "mflow_tasks_available", uint64(available))
	}
}

// family writes one labelled family: its metadata once, then a line per label set.
func family(w io.Writer, name, kind string, lines func(line func(labels string, v int64))) {
	vm.WriteMetadataIfNeeded(w, name, kind)
	lines(func(labels string, v int64) { fmt.Fprintf(w, "%s{%s} %d\n", name, labels, v) })
}

// ServeHTTP answers a scrape: mflow's metrics, then the Go runtime's and the process's.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	m.set.WritePrometheus(&buf)
	vm.WriteProcessMetrics(&buf)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	withHelp(w, &buf)
}

// withHelp copies an exposition, giving each of mflow's HELP lines its text.
func withHelp(w io.Writer, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "# HELP "); ok {
			if text := help[strings.TrimSpace(name)]; text != "" {
				line = "# HELP " + strings.TrimSpace(name) + " " + text
			}
		}
		bw.WriteString(line)
		bw.WriteByte('\n')
	}
}
