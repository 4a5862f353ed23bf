package openlist_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"mflow/internal/openlist"
	"mflow/internal/testsync"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSignsAreCheckedAsOpenListWritesThem(t *testing.T) {
	const token, p = "t0ken", "/films/a film #1 ?%.mkv"
	now := time.Unix(1_800_000_000, 0)
	// A sign written by hand as OpenList's pkg/sign does, to hold Sign to the protocol and not to itself.
	threePart := func(user string, expire int64) string {
		s := openlist.Sign(token, p+":"+user, expire) // MAC over PATH:USER:EXPIRE
		mac, exp, _ := strings.Cut(s, ":")
		return mac + ":" + user + ":" + exp
	}
	for _, c := range []struct {
		name    string
		path    string
		sign    string
		refused string // "" lets the request in
		garbled bool
	}{
		{"never expires", p, openlist.Sign(token, p, 0), "", false},
		{"still valid", p, openlist.Sign(token, p, now.Unix()+60), "", false},
		{"with the user", p, threePart("eyJ1c2VyIjoiYWRtaW4ifQ==", 0), "", false},
		{"expired", p, openlist.Sign(token, p, now.Unix()-1), "expired", false},
		{"another path", "/films/other.mkv", openlist.Sign(token, p, 0), "does not match", false},
		{"another token", p, openlist.Sign("other", p, 0), "does not match", false},
		{"the expiry changed", p, strings.TrimSuffix(openlist.Sign(token, p, 0), "0") + "9999999999", "does not match", false},
		{"the user changed", p, strings.Replace(threePart("eyJ1c2VyIjoiYWRtaW4ifQ==", 0), ":eyJ1", ":eyJ2", 1), "does not match", false},
		{"missing", p, "", "missing", true},
		{"no expiry", p, "abc", "expire missing", true},
		{"expiry not a number", p, "abc:soon", "not a Unix time", true},
		{"four parts", p, "a:b:c:0", "more than three", true},
	} {
		err := openlist.Verify(token, c.path, c.sign, now)
		var se *openlist.SignError
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused) || !errors.As(err, &se) || se.Garbled != c.garbled || !errors.Is(err, openlist.ErrSign)):
			t.Errorf("%s: %v, want %q (garbled %v)", c.name, err, c.refused, c.garbled)
		}
	}
}

func TestTheSignIsOpenListsHMAC(t *testing.T) {
	// base64url(HMAC-SHA256("t0ken", "/a.mkv:0")), padded, as OpenList's HMACSign writes it; computed apart with
	// printf /a.mkv:0 | openssl dgst -sha256 -hmac t0ken -binary | base64 | tr +/ -_
	if got, want := openlist.Sign("t0ken", "/a.mkv", 0), "MjiZXSZP8GyrVW-UBUpIX00gOGKvVr7potbCTbWyKy4=:0"; got != want {
		t.Errorf("Sign = %q, want %q", got, want)
	}
}

// api is an /api/fs/link that counts its calls and answers what answer says.
type api struct {
	*httptest.Server
	mu      sync.Mutex
	calls   int
	release chan struct{} // when set, each call waits for it
	answer  func(n int, r *http.Request) string
}

func newAPI(t *testing.T, answer func(n int, r *http.Request) string) *api {
	a := &api{answer: answer}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.calls++
		n, release := a.calls, a.release
		a.mu.Unlock()
		if release != nil {
			<-release
		}
		if r.Method != http.MethodPost || r.URL.Path != "/base/api/fs/link" || r.Header.Get("Authorization") != "t0ken" || r.Header.Get("Content-Type") != "application/json" {
			fmt.Fprint(w, `{"code":401,"message":"token is invalidated"}`)
			return
		}
		fmt.Fprint(w, a.answer(n, r))
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *api) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

func newClient(t *testing.T, base string, ttl time.Duration) *openlist.Client {
	c, err := openlist.New(openlist.Config{URL: base + "/base/", Token: "t0ken", LinkTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func linkAnswer(n int, _ *http.Request) string {
	return fmt.Sprintf(`{"code":200,"message":"success","data":{"url":"https://cdn.example/f?v=%d","header":{"User-Agent":["DriveUA"],"Cookie":["a=b"]}}}`, n)
}

func TestPlayersOfOnePathShareOneAPICall(t *testing.T) {
	a := newAPI(t, linkAnswer)
	a.release = make(chan struct{})
	c := newClient(t, a.URL, time.Hour)
	var wg sync.WaitGroup
	links := make([]openlist.DriveLink, 8)
	for i := range links {
		wg.Go(func() {
			l, err := c.Link(t.Context(), "/f.mkv")
			if err != nil {
				t.Error(err)
			}
			links[i] = l
		})
	}
	testsync.WaitFor(t, "the first caller's API call", func() bool { return a.count() == 1 }) // the others join it
	close(a.release)
	wg.Wait()
	for i := range 4 { // and later requests reuse the link
		if l, err := c.Link(t.Context(), "/f.mkv"); err != nil || l.URL != links[0].URL {
			t.Errorf("later request %d: %v %v", i, l.URL, err)
		}
	}
	if a.count() != 1 {
		t.Errorf("%d API calls for 12 requests of one path, want 1", a.count())
	}
	for _, l := range links {
		if l.URL != "https://cdn.example/f?v=1" || l.Header.Get("User-Agent") != "DriveUA" || l.Header.Get("Cookie") != "a=b" {
			t.Errorf("link %+v", l)
		}
	}
}

func TestAFailedLinkIsAskedForAgainOnceForAll(t *testing.T) {
	a := newAPI(t, linkAnswer)
	c := newClient(t, a.URL, time.Hour)
	first, _ := c.Link(t.Context(), "/f.mkv")
	second, err := c.Renew(t.Context(), "/f.mkv", first.URL)
	if err != nil || second.URL == first.URL {
		t.Fatalf("renewed: %v %v", second.URL, err)
	}
	// Another stream that found the first link dead too takes the new one without asking again.
	if third, err := c.Renew(t.Context(), "/f.mkv", first.URL); err != nil || third.URL != second.URL {
		t.Errorf("a second renewal of the same dead link: %v %v", third.URL, err)
	}
	if a.count() != 2 {
		t.Errorf("%d API calls, want 2", a.count())
	}
}

func TestALinkAgesOut(t *testing.T) {
	a := newAPI(t, linkAnswer)
	c := newClient(t, a.URL, time.Nanosecond)
	c.Link(t.Context(), "/f.mkv")
	if l, _ := c.Link(t.Context(), "/f.mkv"); l.URL != "https://cdn.example/f?v=2" || a.count() != 2 {
		t.Errorf("after its TTL: %s, %d calls", l.URL, a.count())
	}
}

func TestOpenListsRefusalsAreTold(t *testing.T) {
	for _, c := range []struct {
		name, answer string
		check        func(error) bool
	}{
		{"object not found", `{"code":500,"message":"failed get link: object not found","data":null}`, func(err error) bool {
			var e *openlist.APIError
			return errors.As(err, &e) && e.NotFound() && !e.Unauthorized()
		}},
		{"bad token", `{"code":401,"message":"token is invalidated"}`, func(err error) bool {
			var e *openlist.APIError
			return errors.As(err, &e) && e.Unauthorized()
		}},
		{"not OpenList", `<html>nginx</html>`, func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "not an OpenList API answer")
		}},
		{"no link", `{"code":200,"message":"success","data":{"url":""}}`, func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "no link")
		}},
		{"not http", `{"code":200,"message":"success","data":{"url":"ftp://x/f"}}`, func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "not an http or https URL")
		}},
	} {
		a := newAPI(t, func(int, *http.Request) string { return c.answer })
		_, err := newClient(t, a.URL, time.Hour).Link(t.Context(), "/f.mkv")
		if !c.check(err) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	a := newAPI(t, linkAnswer)
	a.Close()
	var unreachable *openlist.Unreachable
	if _, err := newClient(t, a.URL, time.Hour).Link(t.Context(), "/f.mkv"); !errors.As(err, &unreachable) {
		t.Errorf("OpenList down: %v", err)
	}
}

func TestALinkWithoutASchemeIsHTTP(t *testing.T) {
	for answer, want := range map[string]string{"//cdn.example/f": "http://cdn.example/f", "cdn.example/f": "http://cdn.example/f"} {
		a := newAPI(t, func(int, *http.Request) string {
			return `{"code":200,"message":"success","data":{"url":"` + answer + `"}}`
		})
		if l, err := newClient(t, a.URL, time.Hour).Link(t.Context(), "/f"); err != nil || l.URL != want {
			t.Errorf("%q: %q %v", answer, l.URL, err)
		}
	}
}

func TestACallerLeavingDoesNotFailTheOthers(t *testing.T) {
	a := newAPI(t, linkAnswer)
	a.release = make(chan struct{})
	c := newClient(t, a.URL, time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	left := make(chan error)
	go func() {
		_, err := c.Link(ctx, "/f.mkv")
		left <- err
	}()
	testsync.WaitFor(t, "the API call", func() bool { return a.count() == 1 })
	stayed := make(chan error)
	go func() {
		_, err := c.Link(t.Context(), "/f.mkv")
		stayed <- err
	}()
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Errorf("the caller that left: %v", err)
	}
	close(a.release)
	if err := <-stayed; err != nil {
		t.Errorf("the caller that stayed: %v", err)
	}
}

func TestBadSettingsAreRefused(t *testing.T) {
	for _, cfg := range []openlist.Config{{URL: "127.0.0.1:5244", Token: "t"}, {URL: "ftp://h", Token: "t"}, {URL: "http://h:5244"}} {
		if _, err := openlist.New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
