package rpc

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// bringsSecret reports whether r brings the secret, as "Authorization: Bearer SECRET", "?token=SECRET" or
// the login cookie; one that does not waits its turn in the line of wrong tokens first, so guessing is slow.
func (h *Handler) bringsSecret(r *http.Request) bool {
	if subtle.ConstantTimeCompare([]byte(secretOf(r)), []byte(h.Secret)) == 1 {
		return true
	}
	if c, err := r.Cookie(loginCookie); err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(h.loginToken())) == 1 {
		return true
	}
	h.slowDown(r.Context())
	return false
}

// loginCookie carries, for a browser that logged in, a token made from the secret: the status page and
// play links then need no secret in their URLs, where proxies' logs and histories would keep it.
const loginCookie = "mflow_login"

// loginToken is the login cookie's value: an HMAC of the secret, which the cookie cannot give back.
func (h *Handler) loginToken() string {
	mac := hmac.New(sha256.New, []byte(h.Secret))
	mac.Write([]byte("mflow status login"))
	return hex.EncodeToString(mac.Sum(nil))
}

// loginPage asks a browser for the secret; %s is the page to return to.
const loginPage = `<!doctype html><meta charset="utf-8"><title>mflow: log in</title>
<style>body{font:16px system-ui,sans-serif;max-width:28em;margin:4em auto}input{font:inherit;padding:.3em}</style>
<h1>mflow</h1><p>This page needs mflow's RPC secret (<code>--rpc-secret</code>).</p>
<form method="post" action="/login"><input type="hidden" name="next" value="%s">
<input type="password" name="secret" placeholder="secret" autofocus required> <button>Log in</button></form>
`

// Login answers the login form: the right secret sets the login cookie and returns to the page asked for;
// a wrong one waits its turn in the line of wrong tokens, as over the JSON-RPC.
func (h *Handler) Login(w http.ResponseWriter, r *http.Request) {
	if ok, why := h.Allows(r); !ok {
		http.Error(w, "mflow: "+strings.Replace(why, "the JSON-RPC", "this page", 1), http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	secret := r.PostFormValue("secret")
	if h.Secret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(h.Secret)) != 1 {
		h.slowDown(r.Context())
		http.Error(w, "mflow: wrong secret", http.StatusForbidden)
		return
	}
	next := r.PostFormValue("next")
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		next = "/status" // only a page of mflow's own
	}
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: h.loginToken(), Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 30 * 24 * 3600})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// secretOf is the secret a request brings: its bearer token, else its ?token=.
func secretOf(r *http.Request) string {
	if token, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); bearer {
		return token
	}
	return r.URL.Query().Get("token")
}
