package limit

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)

// step is one thing that happens to the policy, and what it must answer.
type step struct {
	at      time.Duration // after t0
	start   int           // a stream starts wanting this many connections (0: not a start)
	refused *Refusal      // a request is refused
	served  int           // this many requests are served at once (0: none)
	host    string        // "" is cdn.drive.example, a drive no rule knows
	file    string        // "" is "film"

	wantN       int     // a start's connections
	wantProbing bool    // a start that tries one higher
	wantVerdict Verdict // a refusal's
	wantLimit   int     // a refusal's limit
}

func run(t *testing.T, l *Limits, steps []step) {
	t.Helper()
	for i, st := range steps {
		host, file := st.host, st.file
		if host == "" {
			host = "cdn.drive.example"
		}
		if file == "" {
			file = "film"
		}
		now := t0.Add(st.at)
		switch {
		case st.start > 0:
			n, probing := l.Start(host, file, st.start, now)
			if n != st.wantN || probing != st.wantProbing {
				t.Errorf("step %d: start wanting %d: %d, probing %v; want %d, %v", i, st.start, n, probing, st.wantN, st.wantProbing)
			}
		case st.refused != nil:
			v, limit, _ := l.Refused(host, file, *st.refused, now)
			if v != st.wantVerdict || limit != st.wantLimit {
				t.Errorf("step %d: refused %+v: verdict %d limit %d; want %d, %d", i, *st.refused, v, limit, st.wantVerdict, st.wantLimit)
			}
		case st.served > 0:
			l.Served(host, file, st.served, now)
		}
	}
}

func TestARefusalWhileOthersAreServedIsTheLimit(t *testing.T) {
	for name, steps := range map[string][]step{
		"nginx-style 403 at the third": {
			{start: 4, wantN: 4},
			{refused: &Refusal{Status: 403, Served: 2}, wantVerdict: Limited, wantLimit: 2},
			{refused: &Refusal{Status: 403, Served: 2}, wantVerdict: Limited, wantLimit: 2}, // sent together with the third
			{at: time.Minute, start: 4, wantN: 2},                                           // the next play of the file
			{at: time.Minute, start: 4, file: "another film", wantN: 2},                     // and of the drive
			{at: time.Minute, start: 4, host: "cdn2.drive.example", file: "third", wantN: 2},
		},
		"429 and a reset count as 503 does": {
			{refused: &Refusal{Status: 429, Served: 1}, wantVerdict: Limited, wantLimit: 1},
			{refused: &Refusal{Status: 0, Served: 3}, wantVerdict: Limited, wantLimit: 1}, // more served than the limit: stays
			{start: 4, wantN: 1},
		},
		"a limit that rises after an hour": {
			{refused: &Refusal{Status: 403, Served: 2}, wantVerdict: Limited, wantLimit: 2},
			{at: 59 * time.Minute, start: 4, wantN: 2},
			{at: time.Hour, start: 4, wantN: 3, wantProbing: true},
			{at: time.Hour, start: 4, wantN: 2},      // one try an hour
			{at: time.Hour + time.Second, served: 3}, // the try held
			{at: time.Hour + time.Minute, start: 4, wantN: 3},
			{at: 3 * time.Hour, start: 4, wantN: 4, wantProbing: true},
			{at: 3 * time.Hour, refused: &Refusal{Status: 403, Served: 3}, wantVerdict: Limited, wantLimit: 3},
			{at: 3*time.Hour + 59*time.Minute, start: 4, wantN: 3}, // the refused try starts the hour again
		},
		"no try when the stream could not use more": {
			{refused: &Refusal{Status: 403, Served: 2}, wantVerdict: Limited, wantLimit: 2},
			{at: 2 * time.Hour, start: 2, wantN: 2},
			{at: 2 * time.Hour, start: 4, wantN: 3, wantProbing: true},
		},
		"an expired link: the first request refused": {
			{host: "cdnfhnfile.115cdn.net", refused: &Refusal{Status: 403, Served: 0}, wantVerdict: NotALimit},
			{host: "cdnfhnfile.115cdn.net", start: 4, wantN: 2}, // 115's rule stands, nothing learned
			{refused: &Refusal{Status: 403, Served: 0}, wantVerdict: NotALimit},
			{start: 4, wantN: 4},
		},
		"a link expiring while it finishes what it answered is not a limit": {
			// The drive served 4 at once on this link; refusing one while 3 are served is the link dying.
			{refused: &Refusal{Status: 403, Served: 3, MostServed: 4}, wantVerdict: NotALimit},
			{refused: &Refusal{Status: 403, Served: 1, MostServed: 4}, wantVerdict: NotALimit},
			{start: 4, wantN: 4},
			// As many served as ever on the link, and one more refused: the limit.
			{refused: &Refusal{Status: 403, Served: 2, MostServed: 2}, wantVerdict: Limited, wantLimit: 2},
		},
		"every lane refused is not a limit": {
			{host: "cdn.example.com", refused: &Refusal{Status: 503, Served: 0}, wantVerdict: NotALimit},
			{host: "cdn.example.com", refused: &Refusal{Status: 503, Served: 0}, wantVerdict: NotALimit},
			{host: "cdn.example.com", start: 4, wantN: 4},
		},
		"a 404 or a 500 while others are served is not a limit": {
			{host: "cdn.example.com", refused: &Refusal{Status: 404, Served: 2}, wantVerdict: NotALimit},
			{host: "cdn.example.com", refused: &Refusal{Status: 500, Served: 2}, wantVerdict: NotALimit},
			{host: "cdn.example.com", start: 4, wantN: 4},
		},
		"known drives start right": {
			{host: "d11.baidupcs.com", start: 4, wantN: 1},
			{host: "dl-a1.mypikpak.com", start: 4, wantN: 2},
			{host: "video-play-h-zb.drive.quark.cn", start: 4, wantN: 3},
			{host: "cn-beijing-data.aliyundrive.net", start: 16, wantN: 10},
			{host: "cdn.example.com", start: 4, wantN: 4},
			{host: "cdn.example.com", start: 1, wantN: 1},
		},
	} {
		t.Run(name, func(t *testing.T) { run(t, New(Known), steps) })
	}
}

func TestAUsersRuleComesFirst(t *testing.T) {
	r, err := ParseRule("115CDN.net=4")
	if err != nil || r.Suffix != "115cdn.net" || r.PerFile != 4 {
		t.Fatalf("ParseRule: %+v %v", r, err)
	}
	l := New(append([]Rule{r, {Suffix: "files.example.org", PerFile: 1}}, Known...))
	run(t, l, []step{
		{host: "cdnfhnfile.115cdn.net", start: 8, wantN: 4},
		{host: "a.files.example.org", start: 8, wantN: 1},
		{host: "files.example.org", start: 8, wantN: 1},
		{host: "example.org", start: 8, wantN: 8},
	})
	for _, bad := range []string{"115cdn.net", "=2", "115cdn.net=0", "115cdn.net=x", "http://a/=2", "a=65"} {
		if _, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) took it", bad)
		}
	}
}

func TestRetryAfterQuietsTheDrive(t *testing.T) {
	l := New(nil)
	host := "cdn.example.com"
	l.Refused(host, "f", Refusal{Status: 429, RetryAfter: 30 * time.Second}, t0)
	if got := l.QuietUntil("other." + "example.com"); !got.Equal(t0.Add(30 * time.Second)) {
		t.Errorf("quiet until %v, want 30 s after the 429, for every host of the drive", got)
	}
	l.Refused(host, "f", Refusal{Status: 503, RetryAfter: 5 * time.Second}, t0.Add(time.Second))
	if got := l.QuietUntil(host); !got.Equal(t0.Add(30 * time.Second)) {
		t.Errorf("a shorter Retry-After shortened the quiet: %v", got)
	}
	l.Refused(host, "f", Refusal{Status: 403, RetryAfter: time.Hour}, t0)
	if got := l.QuietUntil(host); !got.Equal(t0.Add(30 * time.Second)) {
		t.Errorf("a 403's Retry-After was taken: %v", got)
	}
}

func TestDrivesAreKeyedByTheirRegistrableDomain(t *testing.T) {
	for host, want := range map[string]string{
		"cdnfhnfile.115cdn.net": "115cdn.net", "CDNFHNFILE.115CDN.NET.": "115cdn.net", "d11.baidupcs.com": "baidupcs.com",
		"a.b.example.co.uk": "example.co.uk", "127.0.0.1": "127.0.0.1", "localhost": "localhost",
	} {
		if got := Drive(host); got != want {
			t.Errorf("Drive(%q) = %q, want %q", host, got, want)
		}
	}
}

func TestWhatInstancesShare(t *testing.T) {
	a, b := New(nil), New(nil)
	a.Refused("x.drive.example", "f", Refusal{Status: 403, Served: 2}, t0)
	fact, ok := a.FactOf("y.drive.example")
	if !ok || fact.Limit != 2 || fact.Drive != "drive.example" {
		t.Fatalf("fact: %+v %v", fact, ok)
	}
	b.Learn(fact)
	if n, _ := b.Start("z.drive.example", "g", 4, t0.Add(time.Minute)); n != 2 {
		t.Errorf("another instance starts with %d connections, want the 2 learned", n)
	}
	if st := b.Drives(); len(st) != 1 || st[0].Limit != 2 || !st[0].Learned {
		t.Errorf("drives: %+v", st)
	}
}
