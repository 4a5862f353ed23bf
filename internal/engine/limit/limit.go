// Package limit is the engine's policy for what each drive allows: how many connections one file may have
// open at once. Drives tell it by refusing one more (115 and PikPak allow 2 per file, Baidu 1) and punish
// a client that keeps asking, so a refused extra request while the stream's others are being served is
// read as the limit, remembered per drive and per file, and never asked past again; a learned limit is
// tried one higher at most once an hour. Like pace, it holds no lock and does no I/O: the engine calls it
// under its own lock with the clock passed in, and applies its verdicts.
package limit

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"
)

// Rule is a drive's number of connections per file, known or configured: for links whose host is Suffix
// or ends in "."+Suffix.
type Rule struct {
	Suffix  string // a host name or a domain, lower case: 115cdn.net, baidupcs.com
	PerFile int    // connections one file may have open at once
	Name    string // what the drive is called, for the status page; "" for a user's rule
}

// Known are the drives whose limits are reported (../shared/drives.md in the project's notes: users'
// reports and the tools that talk to them), keyed by the host names their download links use. The names
// were read in public drivers' and tools' source: OpenList's drivers/baidu_netdisk/util.go (d.pcs.baidu.com,
// whose links redirect to *.baidupcs.com), 115 clients' links at cdnfhnfile.115cdn.net, PikPak's at
// dl-*.mypikpak.com, Quark's at *.drive.quark.cn, Aliyun's at *.aliyundrive.net and alipan.com, Thunder's
// at *.xunlei.com. Rules are matched in order: the longer suffix first where two overlap.
var Known = []Rule{
	{"115cdn.net", 2, "115"}, {"115cdn.com", 2, "115"}, {"115.com", 2, "115"},
	{"mypikpak.com", 2, "PikPak"},
	{"baidupcs.com", 1, "Baidu Netdisk"}, {"pcs.baidu.com", 1, "Baidu Netdisk"},
	{"xunlei.com", 1, "Thunder"},
	{"quark.cn", 3, "Quark"}, {"uc.cn", 1, "UC"},
	{"aliyundrive.net", 10, "Aliyun Drive"}, {"aliyundrive.com", 10, "Aliyun Drive"}, {"alicloudccp.com", 10, "Aliyun Drive"}, {"alipan.com", 10, "Aliyun Drive"},
}

// ParseRule reads a --drive value: DOMAIN=N, such as 115cdn.net=2.
func ParseRule(s string) (Rule, error) {
	suffix, n, ok := strings.Cut(strings.TrimSpace(s), "=")
	suffix = strings.Trim(strings.ToLower(strings.TrimSpace(suffix)), ".")
	var per int
	if _, err := fmt.Sscanf(strings.TrimSpace(n), "%d", &per); !ok || err != nil || suffix == "" || strings.ContainsAny(suffix, "/: ") || per < 1 || per > 64 {
		return Rule{}, fmt.Errorf("%q is not DOMAIN=CONNECTIONS, such as 115cdn.net=2 (1 to 64 connections per file)", s)
	}
	return Rule{Suffix: suffix, PerFile: per}, nil
}

// Drive is the key a link's limits are kept under: its host's registrable domain (115cdn.net, not the CDN
// host that rotates), or the host itself where it has none (an IP address, localhost).
func Drive(host string) string {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if d, err := publicsuffix.EffectiveTLDPlusOne(host); err == nil {
		return d
	}
	return host
}

// RetryAfter is how long a learned limit stands before a stream that could use more tries one higher.
const RetryAfter = time.Hour

// Limits is what the policy knows of every drive and file. The zero value knows nothing; New gives it the
// rules.
type Limits struct {
	rules  []Rule
	drives map[string]*known // by Drive
	files  map[string]*known // by the engine's file key
}

// known is what was learned of one drive or one file.
type known struct {
	limit      int       // connections per file; 0 while none was learned
	before     int       // the limit before the last refusal lowered it, for Withdraw
	why        string    // how it was learned, in a few words
	tried      time.Time // when it was last tried one higher, or learned
	refusals   int       // refused requests counted
	lastStatus int       // the last refusal's status; 0 for a reset
	lastAt     time.Time // when
	quietUntil time.Time // nothing goes to the drive before: its Retry-After
}

// New is a policy that knows rules (the user's first, then Known): a rule's drive starts within it.
func New(rules []Rule) *Limits {
	return &Limits{rules: rules, drives: map[string]*known{}, files: map[string]*known{}}
}

// rule is the first rule for host, if any.
func (l *Limits) rule(host string) (Rule, bool) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, r := range l.rules {
		if host == r.Suffix || strings.HasSuffix(host, "."+r.Suffix) {
			return r, true
		}
	}
	return Rule{}, false
}

// maxDrives bounds the drives kept: players name the links, so their hosts are theirs to choose. Past it,
// drives that taught no limit are forgotten.
const maxDrives = 1024

func (l *Limits) drive(host string) *known {
	d := Drive(host)
	k := l.drives[d]
	if k == nil {
		if len(l.drives) >= maxDrives {
			maps.DeleteFunc(l.drives, func(_ string, k *known) bool { return k.limit == 0 })
		}
		k = &known{}
		l.drives[d] = k
	}
	return k
}

func (l *Limits) file(key string) *known {
	k := l.files[key]
	if k == nil {
		if len(l.files) >= 4*maxDrives {
			clear(l.files) // the drives' limits stand for their files
		}
		k = &known{}
		l.files[key] = k
	}
	return k
}

// Start is how many connections a new stream of file, on a link of host, may open, when it would open
// want: the file's learned limit, else its drive's, else a rule's, else want. Once a learned limit has
// stood for RetryAfter and the stream could use more, it is tried one higher (probing), and the hour
// starts again.
func (l *Limits) Start(host, file string, want int, now time.Time) (n int, probing bool) {
	n = want
	var learned *known
	switch f, d := l.files[file], l.drives[Drive(host)]; {
	case f != nil && f.limit > 0:
		learned = f
	case d != nil && d.limit > 0:
		learned = d
	}
	if learned == nil {
		if r, ok := l.rule(host); ok {
			n = min(n, r.PerFile)
		}
		return max(n, 1), false
	}
	n = min(n, learned.limit)
	if learned.limit < want && now.Sub(learned.tried) >= RetryAfter {
		learned.tried = now
		return learned.limit + 1, true
	}
	return max(n, 1), false
}

// Cap is the most connections file on host is known to allow: learned, else a rule's; 0 when nothing is
// known.
func (l *Limits) Cap(host, file string) int {
	if f := l.files[file]; f != nil && f.limit > 0 {
		return f.limit
	}
	if d := l.drives[Drive(host)]; d != nil && d.limit > 0 {
		return d.limit
	}
	if r, ok := l.rule(host); ok {
		return r.PerFile
	}
	return 0
}

// QuietUntil is when requests may go to host's drive again: the end of the Retry-After it last sent.
func (l *Limits) QuietUntil(host string) time.Time {
	if d := l.drives[Drive(host)]; d != nil {
		return d.quietUntil
	}
	return time.Time{}
}

// Refusal is a request the drive would not serve: its status (403, 429, 503; 0 for a connection reset
// before any answer), its Retry-After, how many other requests of the same stream to the same file were
// being served when it came, and the most the drive served at once on the same link before.
type Refusal struct {
	Status     int
	RetryAfter time.Duration
	Served     int
	MostServed int
}

// Verdict is what a refusal means.
type Verdict int

const (
	// NotALimit: the drive refused a request while none of the stream's others was served (the first
	// one, or all of them), or while fewer were served than it served at once on the same link before:
	// an expired link (403: resolve it again; a link that expires refuses new requests while it finishes
	// the ones it answered) or a drive that wants a pause (429, 503: wait its Retry-After). The engine
	// carries on as for any failure.
	NotALimit Verdict = iota
	// Limited: the drive serves Served requests of the file and refused one more. The stream keeps that
	// many connections and the refused one's work is taken over, not retried.
	Limited
)

// Refusals are the statuses a drive refuses one connection too many with.
func refusal(status int) bool {
	return status == 0 || status == http.StatusForbidden || status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable
}

// Refused records a refusal of a request for file on host and says what it means. learned is set when it
// lowered a limit (or set a first one), for the one line that says so.
func (l *Limits) Refused(host, file string, r Refusal, now time.Time) (v Verdict, limit int, learned bool) {
	d := l.drive(host)
	d.refusals++
	d.lastStatus, d.lastAt = r.Status, now
	if r.RetryAfter > 0 && (r.Status == http.StatusTooManyRequests || r.Status == http.StatusServiceUnavailable) {
		d.quietUntil = later(d.quietUntil, now.Add(r.RetryAfter))
	}
	if !refusal(r.Status) || r.Served < 1 || r.Served < r.MostServed {
		return NotALimit, 0, false
	}
	f := l.file(file)
	why := fmt.Sprintf("refused a connection beyond %d (%s)", r.Served, StatusText(r.Status))
	for _, k := range []*known{f, d} {
		if k.limit == 0 || r.Served < k.limit {
			k.before = k.limit
			k.limit, k.why, learned = r.Served, why, true
		}
		k.tried = now // tried one higher just now, or learned: the hour starts
	}
	return Limited, min(f.limit, d.limit), learned
}

// Served records that n requests of one stream to file on host were being served at once: a limit below
// n, tried one higher, held, and rises to n.
func (l *Limits) Served(host, file string, n int, now time.Time) (raised bool) {
	for _, k := range []*known{l.files[file], l.drives[Drive(host)]} {
		if k != nil && k.limit > 0 && n > k.limit {
			k.limit, k.why, k.tried = n, fmt.Sprintf("served %d at once", n), now
			raised = true
		}
	}
	return raised
}

// Withdraw takes back the limits the last refusals of file on host set: they turned out to be a link
// that expired (every request refused next, and resolving it again worked), not the drive's limit.
func (l *Limits) Withdraw(host, file string) {
	for _, k := range []*known{l.files[file], l.drives[Drive(host)]} {
		if k != nil && k.limit > 0 {
			k.limit, k.before, k.why = k.before, 0, ""
		}
	}
}

// Forget drops what was learned of file, when no stream plays it any more and it was learned long ago;
// the drive's knowledge stays. The engine calls it to keep the table of files bounded.
func (l *Limits) Forget(file string, now time.Time) {
	if f := l.files[file]; f != nil && now.Sub(f.tried) >= RetryAfter {
		delete(l.files, file)
	}
}

// DriveState is what the status page and the metrics show of one drive.
type DriveState struct {
	Drive      string    // its registrable domain
	Name       string    // the drive's name when a rule knows it
	Limit      int       // connections per file: learned, else the rule's; 0 unknown
	Learned    bool      // Limit was learned from the drive's answers, not a rule
	Why        string    // how it was learned
	Refusals   int       // refused requests
	LastStatus int       // the last refusal's status, 0 a reset
	LastAt     time.Time // when
}

// Drives is what is known of every drive that refused something or has a learned limit, by name.
func (l *Limits) Drives() []DriveState {
	var out []DriveState
	for name, k := range l.drives {
		st := DriveState{Drive: name, Limit: k.limit, Learned: k.limit > 0, Why: k.why, Refusals: k.refusals, LastStatus: k.lastStatus, LastAt: k.lastAt}
		if r, ok := l.rule(name); ok {
			st.Name = r.Name
			if st.Limit == 0 {
				st.Limit = r.PerFile
			}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b DriveState) int { return strings.Compare(a.Drive, b.Drive) })
	return out
}

// Fact is a learned limit, as instances share it.
type Fact struct {
	Drive string    `json:"drive"`
	Limit int       `json:"limit"`
	Why   string    `json:"why"`
	At    time.Time `json:"at"`
}

// Learn takes a limit another instance learned of a drive, when it is news: lower than what this one
// knows, or newer.
func (l *Limits) Learn(f Fact) {
	k := l.drives[f.Drive]
	if k == nil {
		k = &known{}
		l.drives[f.Drive] = k
	}
	if k.limit == 0 || f.Limit < k.limit || f.At.After(k.tried) {
		k.limit, k.why, k.tried = f.Limit, f.Why, f.At
	}
}

// FactOf is what this instance knows of host's drive, to share; false when it learned nothing.
func (l *Limits) FactOf(host string) (Fact, bool) {
	name := Drive(host)
	k := l.drives[name]
	if k == nil || k.limit == 0 {
		return Fact{}, false
	}
	return Fact{Drive: name, Limit: k.limit, Why: k.why, At: k.tried}, true
}

// StatusText names a refusal's status, 0 being a connection reset.
func StatusText(status int) string {
	if status == 0 {
		return "connection reset"
	}
	return fmt.Sprintf("%d", status)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
