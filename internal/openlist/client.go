package openlist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"mflow/internal/access"
)

// Config is how mflow reaches OpenList (--openlist, --openlist-token).
type Config struct {
	// URL is OpenList's address, as its users open it: http://127.0.0.1:5244, or with the sub-path it is
	// served under.
	URL string
	// Token is OpenList's token (Settings → Other): it signs OpenList's redirects to mflow and lets mflow
	// call OpenList's API. Never logged.
	Token string
	// LinkTTL is how long a link OpenList gave for a path is reused by every request and player of that
	// path, unless it fails first. Default 10 minutes: under the shortest drive link's life (Aliyun's,
	// about 15), so most plays never see one expire; one that does is asked for again.
	LinkTTL time.Duration
	// Timeout bounds one API call. Default 15 s.
	Timeout time.Duration
}

// maxLinks bounds the links kept, one per path recently played.
const maxLinks = 1024

// maxAnswer bounds an API answer read: a link and its headers.
const maxAnswer = 1 << 20

// Client checks OpenList's signs and asks OpenList where files are. Make one with New; Close it.
type Client struct {
	cfg  Config
	api  string       // the /api/fs/link URL
	http *http.Client // carries the API calls

	ctx   context.Context // the API calls' context: an answer serves every request waiting, not only the first
	stop  context.CancelFunc
	wg    sync.WaitGroup     // the API calls under way
	calls singleflight.Group // one API call at a time per path

	mu    sync.Mutex           // protects links
	links map[string]DriveLink // the last link of each path played, by path
}

// DriveLink is where OpenList says a file is now.
type DriveLink struct {
	URL    string
	Header http.Header // the headers the drive wants: User-Agent, Referer, Cookie
	// Reach is the class of OpenList's own address, as mflow reached it: a link OpenList gives may lead
	// where OpenList itself stands (its own /p/ relay on this machine or the LAN), whoever plays it.
	Reach access.Network
	got   time.Time // when OpenList gave it
}

// New checks cfg and makes a Client.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--openlist %q is not OpenList's address: want http://HOST:PORT, as its users open it", cfg.URL)
	}
	if cfg.Token == "" {
		return nil, errors.New("--openlist needs --openlist-token: OpenList's token, from its Settings → Other")
	}
	if cfg.LinkTTL <= 0 {
		cfg.LinkTTL = 10 * time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	transport := http.DefaultTransport.(*http.Transport).Clone() // its own: CloseIdleConnections of others' leaves it be
	u.Path = strings.TrimRight(u.Path, "/") + "/api/fs/link"
	u.RawQuery, u.Fragment = "", ""
	ctx, stop := context.WithCancel(context.Background())
	return &Client{cfg: cfg, api: u.String(), http: &http.Client{Transport: transport, Timeout: cfg.Timeout}, ctx: ctx, stop: stop, links: map[string]DriveLink{}}, nil
}

// Check lets a request for path with sign in, or says why not.
func (c *Client) Check(path, sign string) error {
	return Verify(c.cfg.Token, path, sign, time.Now())
}

// Link is where the file at path is: the link OpenList last gave for it, while it is young enough, or a
// new one.
func (c *Client) Link(ctx context.Context, path string) (DriveLink, error) {
	c.mu.Lock()
	l, ok := c.links[path]
	c.mu.Unlock()
	if ok && time.Since(l.got) < c.cfg.LinkTTL {
		return l, nil
	}
	return c.ask(ctx, path)
}

// Renew is a new link for path, whose link stale failed: unless another request renewed it already, OpenList
// is asked again.
func (c *Client) Renew(ctx context.Context, path, stale string) (DriveLink, error) {
	c.mu.Lock()
	l, ok := c.links[path]
	if ok && l.URL == stale {
		delete(c.links, path)
		ok = false
	}
	c.mu.Unlock()
	if ok && time.Since(l.got) < c.cfg.LinkTTL {
		return l, nil
	}
	return c.ask(ctx, path)
}

// Close ends the API calls under way, waits for them, and closes the idle connections to OpenList.
func (c *Client) Close() {
	c.stop()
	c.wg.Wait()
	c.http.CloseIdleConnections()
}

// ask calls the API for path, once for all the callers asking at the same time; the call goes on for the
// others when one leaves.
func (c *Client) ask(ctx context.Context, path string) (DriveLink, error) {
	answer := c.calls.DoChan(path, func() (any, error) {
		c.wg.Add(1)
		defer c.wg.Done()
		l, err := c.fetch(path)
		if err == nil {
			c.keep(path, l)
		}
		return l, err
	})
	select {
	case a := <-answer:
		if a.Err != nil {
			return DriveLink{}, a.Err
		}
		return a.Val.(DriveLink), nil
	case <-ctx.Done():
		return DriveLink{}, context.Cause(ctx)
	}
}

// keep remembers path's link, within maxLinks.
func (c *Client) keep(path string, l DriveLink) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.links) >= maxLinks {
		for p, old := range c.links {
			if time.Since(old.got) >= c.cfg.LinkTTL {
				delete(c.links, p)
			}
		}
		for p := range c.links {
			if len(c.links) < maxLinks {
				break
			}
			delete(c.links, p)
		}
	}
	c.links[path] = l
}

// APIError is OpenList's refusal of an API call: its code and message.
type APIError struct {
	Code    int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("OpenList answered %d: %s", e.Code, e.Message)
}

// NotFound reports whether OpenList has no such file.
func (e *APIError) NotFound() bool {
	return e.Code == http.StatusNotFound || strings.Contains(strings.ToLower(e.Message), "not found")
}

// Unauthorized reports whether OpenList refused the token.
func (e *APIError) Unauthorized() bool {
	return e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden
}

// Unreachable is an API call that got no answer.
type Unreachable struct {
	API string // the URL called
	Err error
}

func (e *Unreachable) Error() string {
	return fmt.Sprintf("OpenList unreachable at %s: %v", e.API, e.Err)
}
func (e *Unreachable) Unwrap() error { return e.Err }

// envelope is every OpenList API answer: a code of its own (200 is success), a message, the data.
type envelope struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    struct {
		URL    string      `json:"url"`
		Header http.Header `json:"header"`
	} `json:"data"`
}

// fetch asks OpenList's API for path's link: POST /api/fs/link {"path": path}, the raw token as
// Authorization.
func (c *Client) fetch(path string) (DriveLink, error) {
	body, _ := json.Marshal(map[string]string{"path": path})
	var reach access.Network
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reach = access.NetworkOf(info.Conn.RemoteAddr().String()) }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(c.ctx, trace), http.MethodPost, c.api, strings.NewReader(string(body)))
	if err != nil {
		return DriveLink{}, err
	}
	req.Header.Set("Authorization", c.cfg.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return DriveLink{}, &Unreachable{API: c.api, Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return DriveLink{}, &Unreachable{API: c.api, Err: err}
	}
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		if resp.StatusCode != http.StatusOK {
			return DriveLink{}, &APIError{Code: resp.StatusCode, Message: resp.Status}
		}
		return DriveLink{}, &APIError{Code: resp.StatusCode, Message: "not an OpenList API answer (is --openlist OpenList's address?)"}
	}
	if env.Code != http.StatusOK {
		return DriveLink{}, &APIError{Code: env.Code, Message: env.Message}
	}
	link, err := absolute(env.Data.URL)
	if err != nil {
		return DriveLink{}, &APIError{Code: env.Code, Message: err.Error()}
	}
	return DriveLink{URL: link, Header: env.Data.Header, Reach: reach, got: time.Now()}, nil
}

// absolute is the link OpenList gave, made absolute as OpenList's own proxy does: one without a scheme is
// http.
func absolute(raw string) (string, error) {
	switch {
	case raw == "":
		return "", errors.New("the answer holds no link")
	case strings.HasPrefix(raw, "//"):
		raw = "http:" + raw
	case !strings.Contains(raw, "://"):
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("the link %q is not an http or https URL", raw)
	}
	return raw, nil
}
