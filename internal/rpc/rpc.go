// Package rpc speaks aria2's JSON-RPC, as the browser extensions, userscripts and AriaNg that "send to
// aria2" expect it to the letter, and turns it into mflow tasks. It adapts; the task store decides.
package rpc

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"mflow/internal/access"
	"mflow/internal/task"
)

// Handler answers /jsonrpc over POST, GET (with JSONP) and WebSocket. Its fields are set before it serves.
type Handler struct {
	// Tasks holds the tasks.
	Tasks *task.Registry
	// Defaults are what a task that sets no option gets, as getOption reports them.
	Defaults Defaults
	// Secret, when set, must come as "token:SECRET" first in every call's params; then any client that
	// sends it is answered.
	Secret string
	// ListenAll answers clients on any address without a Secret (aria2's --rpc-listen-all). By default,
	// without a Secret, only clients on this machine are answered, as aria2 listens on loopback only.
	ListenAll bool
	// AllowOriginAll answers pages of any origin, with CORS headers (aria2's --rpc-allow-origin-all). By
	// default only clients that are not browser pages, pages mflow serves, and browser extensions are.
	AllowOriginAll bool
	// BodyTimeout bounds the wait for a request's body, so a client that sends it slowly is not held
	// forever. Default 10 s.
	BodyTimeout time.Duration
	// MaxSockets bounds the WebSockets open at once; one more is answered 503. AriaNg and the extensions
	// keep one each. Default 64.
	MaxSockets int
	// FrameTimeout bounds the time a WebSocket message may take to arrive once it has begun: a client that
	// sends half a message and waits is cut, not left holding what it sent. Default 10 s.
	FrameTimeout time.Duration
	// AuthDelay is how long each wrong token holds up the next: failures wait in one line for all
	// clients, so guessing is slow however many connections try. Default 1 s.
	AuthDelay time.Duration
	// Version is mflow's, reported among getVersion's features.
	Version string
	// Connections, when set, are the upstream requests the players of a task have open now, for getServers.
	Connections func(gid string) []Connection
	// Shutdown, when set, stops mflow: as on SIGTERM, or at once when force is set (aria2.shutdown,
	// aria2.forceShutdown). It is called once the answer is written.
	Shutdown func(force bool)
	// MaxAnswer bounds the answer to one request being built, in bytes (a share of --max-memory);
	// DefaultMaxAnswer when 0.
	MaxAnswer int
	// Logger receives a DEBUG line per call. Default slog.Default().
	Logger *slog.Logger

	globalMu sync.Mutex        // protects global
	global   map[string]string // options set with changeGlobalOption, kept only to echo them

	sessionOnce sync.Once           // makes sessionID
	sessionID   string              // getSessionInfo's answer, the same for the life of the handler
	failures    *semaphore.Weighted // the one line wrong tokens wait in
	failOnce    sync.Once           // makes failures
	sockets     *semaphore.Weighted // the WebSockets open, at most maxSockets
	socketsOnce sync.Once           // makes sockets
}

const (
	// maxBody is the largest request body accepted, as aria2: a WebSocket frame too.
	maxBody = 2 << 20
	// maxCalls bounds the calls of one batch or one system.multicall.
	maxCalls = 256
)

// jsonpCallback is what a JSONP callback name may be made of: a script identifier, dots for a namespace.
var jsonpCallback = regexp.MustCompile(`^[A-Za-z0-9_.$]{1,128}$`)

// rpcError is a JSON-RPC error object.
type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

var (
	errParse          = &rpcError{-32700, "Parse error."}
	errInvalidRequest = &rpcError{-32600, "Invalid Request."}
	errInvalidParams  = &rpcError{-32602, "Invalid params."}
)

var null = json.RawMessage("null")

func (h *Handler) logger() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

// Allows reports whether a request may use the JSON-RPC, and why not: the status pages follow the same rule.
func (h *Handler) Allows(r *http.Request) (bool, string) {
	if h.Secret == "" && !h.ListenAll && access.NetworkOf(r.RemoteAddr) != access.Loopback {
		return false, "the JSON-RPC answers only this machine unless mflow has --rpc-secret (or --rpc-listen-all)"
	}
	if !h.AllowOriginAll && !access.SameOriginOrExtension(r) {
		return false, "the JSON-RPC does not answer pages of other sites; start mflow with --rpc-allow-origin-all to let them in"
	}
	return true, ""
}

// Guard lets through to next (the status page, the metrics) only the requests the JSON-RPC would answer:
// the same clients and pages, and, when mflow has a secret, only requests that bring it, as
// "Authorization: Bearer SECRET" (a Prometheus scrape) or "?token=SECRET" (a browser).
func (h *Handler) Guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ok, why := h.Allows(r); !ok {
			http.Error(w, "mflow: "+strings.Replace(why, "the JSON-RPC", "this page", 1), http.StatusForbidden)
			return
		}
		if h.Secret != "" && !h.bringsSecret(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mflow"`)
			if strings.Contains(r.Header.Get("Accept"), "text/html") {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				w.Header().Set("Cache-Control", "no-store")
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprintf(w, loginPage, html.EscapeString(r.URL.Path))
				return
			}
			http.Error(w, "mflow: this page needs the RPC secret: log in at /status in a browser, or send Authorization: Bearer SECRET", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// Trusts reports whether r comes from a client the JSON-RPC answers: one on this machine (or any, with
// --rpc-listen-all and no secret) that is not a page of another site, or one that brings the secret as the
// status page takes it. Such a client may name a task by a prefix of its GID, as it may over the JSON-RPC.
func (h *Handler) Trusts(r *http.Request) bool {
	if ok, _ := h.Allows(r); !ok {
		return false
	}
	if h.Secret == "" || access.NetworkOf(r.RemoteAddr) == access.Loopback {
		return true
	}
	_, cookieErr := r.Cookie(loginCookie)
	return (secretOf(r) != "" || cookieErr == nil) && h.bringsSecret(r)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if ok, why := h.Allows(r); !ok {
		http.Error(w, "mflow: "+why, http.StatusForbidden)
		return
	}
	hdr := w.Header()
	if h.AllowOriginAll {
		hdr.Set("Access-Control-Allow-Origin", "*")
	}
	if r.Method == http.MethodGet && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		h.serveWebSocket(w, r) // the connection is the socket's from then on: nothing to flush
		return
	}
	c := call{ctx: r.Context(), from: access.NetworkOf(r.RemoteAddr), origin: originOf(r), after: new([]func())}
	defer func() { // once the reply is on its way
		_ = http.NewResponseController(w).Flush()
		c.runAfter()
	}()
	switch r.Method {
	case http.MethodOptions:
		if h.AllowOriginAll && r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != "" {
			hdr.Set("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
			hdr.Set("Access-Control-Max-Age", "1728000")
			if ah := r.Header.Get("Access-Control-Request-Headers"); ah != "" {
				hdr.Set("Access-Control-Allow-Headers", ah)
			}
			if r.Header.Get("Access-Control-Request-Private-Network") == "true" {
				hdr.Set("Access-Control-Allow-Private-Network", "true")
			}
		}
		w.WriteHeader(http.StatusOK)
	case http.MethodGet:
		body, callback := getRequest(r.URL.RawQuery)
		if callback != "" && !jsonpCallback.MatchString(callback) {
			http.Error(w, "mflow: jsoncallback must be a script name: letters, digits, _ . $", http.StatusBadRequest)
			return
		}
		out, status := h.process(c, body)
		h.reply(w, out, status, callback)
	case http.MethodPost:
		timeout := h.BodyTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout))
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			return
		}
		if len(body) > maxBody {
			hdr.Set("Connection", "close")
			http.Error(w, "mflow: JSON-RPC request over 2 MiB", http.StatusRequestEntityTooLarge)
			return
		}
		out, status := h.process(c, body)
		h.reply(w, out, status, "")
	default:
		hdr.Set("Allow", "GET, POST, OPTIONS")
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func (h *Handler) reply(w http.ResponseWriter, out *answer, status int, callback string) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("Expires", time.Now().UTC().Format(http.TimeFormat))
	if callback != "" {
		hdr.Set("Content-Type", "text/javascript")
	} else {
		hdr.Set("Content-Type", "application/json-rpc")
	}
	w.WriteHeader(status)
	if callback != "" {
		io.WriteString(w, callback+"(")
		defer io.WriteString(w, ")")
	}
	out.WriteTo(w)
}

// getRequest rebuilds a JSON-RPC request from a GET query: method, id and base64 params, or, with neither
// method nor id, a whole base64 request. method and id are taken as they stand, as aria2 does.
func getRequest(rawQuery string) (body []byte, callback string) {
	q := map[string]string{}
	for part := range strings.SplitSeq(rawQuery, "&") {
		k, v, _ := strings.Cut(part, "=")
		if _, seen := q[k]; !seen {
			q[k] = v
		}
	}
	if cb, err := url.QueryUnescape(q["jsoncallback"]); err == nil {
		callback = cb
	}
	// Bad params answer Invalid Request, as aria2 does: a JSON string stands for them, not an object.
	invalid := []byte(`"bad params"`)
	params := []byte(nil)
	if p, ok := q["params"]; ok {
		unescaped, err := url.QueryUnescape(p)
		if err != nil {
			return invalid, callback
		}
		if params, err = base64.StdEncoding.DecodeString(unescaped); err != nil || !json.Valid(params) {
			return invalid, callback
		}
	}
	method, hasMethod := q["method"]
	id, hasID := q["id"]
	if !hasMethod && !hasID {
		return params, callback
	}
	req := map[string]json.RawMessage{}
	if hasMethod {
		req["method"], _ = json.Marshal(method)
	}
	if hasID {
		req["id"], _ = json.Marshal(id)
	}
	if params != nil {
		req["params"] = params
	}
	body, _ = json.Marshal(req)
	return body, callback
}

// process answers one body: a request, or a batch of them. It returns the reply and its HTTP status.
func (h *Handler) process(c call, body []byte) (*answer, int) {
	body = bytes.TrimSpace(body)
	out := &answer{bound: cmp.Or(h.MaxAnswer, DefaultMaxAnswer)}
	if len(body) > 0 && body[0] == '[' {
		var batch []json.RawMessage
		if err := json.Unmarshal(body, &batch); err != nil {
			return errorAnswer(null, errParse, http.StatusInternalServerError)
		}
		if len(batch) > maxCalls {
			return errorAnswer(null, &rpcError{1, fmt.Sprintf("Too many calls in one batch: %d, at most %d.", len(batch), maxCalls)}, http.StatusBadRequest)
		}
		// aria2 drops what is not an object
		batch = slices.DeleteFunc(batch, func(raw json.RawMessage) bool {
			t := bytes.TrimSpace(raw)
			return len(t) == 0 || t[0] != '{'
		})
		if err := out.list(len(batch), func(i int) error { _, err := h.one(c, out, batch[i]); return err }); err != nil {
			return errorAnswer(null, rpcErrorOf(err), errStatus)
		}
		return out, http.StatusOK
	}
	if !json.Valid(body) {
		return errorAnswer(null, errParse, http.StatusInternalServerError)
	}
	status, err := h.one(c, out, body)
	if err != nil {
		return errorAnswer(null, rpcErrorOf(err), errStatus)
	}
	return out, status
}

// rpcErrorOf is err as a JSON-RPC error object.
func rpcErrorOf(err error) *rpcError {
	if e, ok := err.(*rpcError); ok {
		return e
	}
	return &rpcError{1, err.Error()}
}

func (e *rpcError) Error() string { return e.Message }

// one answers a single request object into out, and returns the HTTP status a lone request of it is
// answered with. An error means out cannot be finished (too large): the whole answer must be replaced.
func (h *Handler) one(c call, out *answer, raw json.RawMessage) (int, error) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(raw, &req); err != nil {
		return http.StatusBadRequest, out.response(null, nil, errInvalidRequest)
	}
	id, hasID := req["id"]
	if !hasID {
		return http.StatusBadRequest, out.response(null, nil, errInvalidRequest)
	}
	var method string
	if err := json.Unmarshal(req["method"], &method); err != nil {
		return http.StatusBadRequest, out.response(id, nil, errInvalidRequest)
	}
	var params []json.RawMessage
	if p, ok := req["params"]; ok && string(p) != "null" {
		if err := json.Unmarshal(p, &params); err != nil {
			return http.StatusInternalServerError, out.response(id, nil, errInvalidParams)
		}
	}
	result, err := h.call(c, method, params)
	h.logger().Debug("rpc", "method", method, "err", err)
	if err != nil {
		return http.StatusBadRequest, out.response(id, nil, &rpcError{1, ariaMessage(err)})
	}
	return http.StatusOK, out.response(id, result, nil)
}

// call runs a method after checking the token, which is taken off the params whether a secret is set or not.
func (h *Handler) call(c call, method string, params []json.RawMessage) (any, error) {
	m, known := methods[method]
	if !known {
		return nil, wiref("No such method: %s", method)
	}
	if strings.HasPrefix(method, "system.") {
		return m(h, c, params)
	}
	var token string
	if len(params) > 0 {
		var s string
		if json.Unmarshal(params[0], &s) == nil && strings.HasPrefix(s, "token:") {
			token, params = strings.TrimPrefix(s, "token:"), params[1:]
		}
	}
	if h.Secret != "" {
		if subtle.ConstantTimeCompare([]byte(token), []byte(h.Secret)) != 1 {
			h.slowDown(c.ctx)
			return nil, wireError("Unauthorized")
		}
		if c.authorized != nil {
			c.authorized.Store(true)
		}
	}
	if err := h.Tasks.Ready(); err != nil {
		return nil, err
	}
	return m(h, c, params)
}

// slowDown makes a wrong token wait its turn in the one line for all clients, then AuthDelay.
func (h *Handler) slowDown(ctx context.Context) {
	h.failOnce.Do(func() { h.failures = semaphore.NewWeighted(1) })
	if h.failures.Acquire(ctx, 1) != nil {
		return
	}
	defer h.failures.Release(1)
	delay := h.AuthDelay
	if delay == 0 {
		delay = time.Second
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// call is one request's circumstances, handed to every method it runs.
type call struct {
	ctx  context.Context // the request's
	from access.Network  // the class of the client calling: a task's background probe may reach what its adder could reach, no more
	// origin is "http://HOST" as the client reached mflow, where a task's play link is; "" when unknown.
	origin string
	// after holds what must wait until the reply is written (a shutdown answers "OK" first).
	after *[]func()
	// authorized, for a WebSocket, is set once a call of it brought the secret: its notifications start then.
	authorized *atomic.Bool
}

// originOf is the scheme and host r reached mflow by.
func originOf(r *http.Request) string {
	if r.Host == "" {
		return ""
	}
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// later runs f once the reply to this call is written.
func (c call) later(f func()) { *c.after = append(*c.after, f) }

// runAfter runs what the calls of a request left for after its reply.
func (c call) runAfter() {
	for _, f := range *c.after {
		f()
	}
	*c.after = nil
}

// wireError is an error whose text is aria2's, sent to the client as it is.
type wireError string

func (e wireError) Error() string { return string(e) }

func wiref(format string, args ...any) error { return wireError(fmt.Sprintf(format, args...)) }
