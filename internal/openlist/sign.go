// Package openlist makes mflow an OpenList (or AList) download proxy. OpenList redirects a player to
// mflow with a signed path; mflow checks the sign against the token both share, asks OpenList's
// /api/fs/link where the file is now, and plays that link. The link is asked for once for all the
// requests and players of a path, and again only when it fails or ages out.
package openlist

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrSign is a sign that does not let the request in: missing, garbled, forged or expired.
var ErrSign = errors.New("bad sign")

// SignError says why a sign was refused.
type SignError struct {
	Reason  string // in a few words: "sign missing", "sign expired", …
	Garbled bool   // the sign is not of OpenList's form at all (the request is malformed, not forged)
}

func (e *SignError) Error() string { return e.Reason }
func (e *SignError) Unwrap() error { return ErrSign }

// Sign is OpenList's sign of path, valid until expire (Unix seconds; 0 never expires): the form its
// "Download proxy URL" redirects carry, base64url(HMAC-SHA256(token, path:expire)):expire.
func Sign(token, path string, expire int64) string {
	exp := strconv.FormatInt(expire, 10)
	return mac(token, path+":"+exp) + ":" + exp
}

// Verify checks sign for path at time now, in either of OpenList's forms: MAC:EXPIRE, or MAC:USER:EXPIRE
// where USER (base64url of the user's JSON) is part of what is signed. The MACs are compared in constant
// time.
func Verify(token, path, sign string, now time.Time) error {
	if sign == "" {
		return &SignError{Reason: "sign missing: the link must come from OpenList, whose redirect adds ?sign=", Garbled: true}
	}
	parts := strings.Split(sign, ":")
	if len(parts) < 2 {
		return &SignError{Reason: "sign garbled: expire missing", Garbled: true}
	}
	if len(parts) > 3 {
		return &SignError{Reason: "sign garbled: more than three parts", Garbled: true}
	}
	exp := parts[len(parts)-1]
	expire, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || expire < 0 {
		return &SignError{Reason: fmt.Sprintf("sign garbled: expire %q is not a Unix time", exp), Garbled: true}
	}
	if expire != 0 && now.Unix() > expire {
		return &SignError{Reason: fmt.Sprintf("sign expired at %s: ask OpenList for the file again", time.Unix(expire, 0).UTC().Format(time.RFC3339))}
	}
	signed := path + ":" + strings.Join(parts[1:], ":")
	if !hmac.Equal([]byte(mac(token, signed)), []byte(parts[0])) {
		return &SignError{Reason: "sign does not match the path: not signed with this --openlist-token"}
	}
	return nil
}

// mac is base64url, padded, of HMAC-SHA256(token, data), as OpenList writes it.
func mac(token, data string) string {
	h := hmac.New(sha256.New, []byte(token))
	h.Write([]byte(data))
	return base64.URLEncoding.EncodeToString(h.Sum(nil))
}
