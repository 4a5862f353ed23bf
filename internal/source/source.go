// Package source is the vocabulary every layer shares for what mflow fetches: where to ask and how (a
// Location), a link as a player or a task gives it, the version of a file a probe found, and the target the
// engine fetches. It holds no behaviour beyond naming these things.
package source

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"

	"mflow/internal/access"
)

// Location is where to ask for a file and how: every request for it carries the same headers, goes through
// the same proxy, and may reach only what the asking player could (access.Policy).
type Location struct {
	URL string // the URL asked
	// Header is sent with every request, redirects included: drives want their Cookie, Referer and
	// User-Agent on the CDN host too.
	Header http.Header
	// Proxy is the HTTP proxy requests go through; nil uses the environment's (HTTP_PROXY and the like).
	Proxy *url.URL
	// From is the class of the player asking: where requests may connect depends on it.
	From access.Network
}

// At is the same way of asking, at another URL: where a redirect led, or a mirror.
func (l Location) At(rawURL string) Location {
	l.URL = rawURL
	return l
}

// Link is what a player or a task asked to stream: its Location's URL is as the user gave it, before
// redirects.
type Link struct {
	Location
	// Name, when set, is the file name the player is told.
	Name string
	// Mirrors are other URLs of the same file, asked for the same way.
	Mirrors []string
}

// Identity names a link by everything that may make it another file or another answer: the player's
// class (a probe or a cached chunk of one class never serves another), the proxy, the URL and the headers
// (the same URL with another Cookie may be another file).
func (l Link) Identity() string {
	var b strings.Builder
	proxy := ""
	if l.Proxy != nil {
		proxy = l.Proxy.String()
	}
	fmt.Fprintf(&b, "%d\x00%s\x00%s", l.From, proxy, l.URL)
	for _, name := range slices.Sorted(maps.Keys(l.Header)) {
		fmt.Fprintf(&b, "\n%s: %s", name, strings.Join(l.Header[name], ", "))
	}
	return b.String()
}

// TaskIdentity names the file of a task for a player of class from: a task's streams share downloads and
// the cache whatever its signed URL is now, but never across classes of player (the policy may let one
// reach what another may not).
func TaskIdentity(gid string, from access.Network) string {
	return fmt.Sprintf("task %s %d", gid, from)
}

// OpenListIdentity names the file at OpenList path p for a player of class from: its players share
// downloads and the cache whatever drive link OpenList gives for it now.
func OpenListIdentity(p string, from access.Network) string {
	return fmt.Sprintf("openlist %s %d", p, from)
}

// Version identifies one version of a file. Bytes of two versions must never be spliced into one answer.
type Version struct {
	Size         int64  // bytes in the file, -1 when unknown
	ETag         string // as the upstream sent it, "" when absent
	LastModified string // as the upstream sent it, "" when absent
}

// Target is one version of a file at a Location (after redirects): what the engine fetches, checking every
// answer against Version.
type Target struct {
	Location
	Version Version
}

// FileKey names a version of a file for sharing and caching its chunks: identity names the file as the user
// gave it (a link's Identity, or the task holding it), never a signed redirect target that changes; the
// version's size and validators make a changed file another key.
func FileKey(identity string, v Version) string {
	return fmt.Sprintf("%s\x00%d\x00%s\x00%s", identity, v.Size, v.ETag, v.LastModified)
}

// HostOf is the host rawURL's requests go to, without its port; "" for a URL that does not parse.
func HostOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// FileName is the last segment of rawURL's path, unescaped ("my%20film.mkv" is "my film.mkv"); "" when the
// path has none.
func FileName(rawURL string) string {
	// Only the path's last segment is read: parsing a whole signed link (kilobytes) for it would cost every
	// listing of the tasks far more than the name.
	rest, _, _ := strings.Cut(rawURL, "#")
	rest, _, _ = strings.Cut(rest, "?")
	if _, afterScheme, ok := strings.Cut(rest, "://"); ok {
		i := strings.IndexByte(afterScheme, '/')
		if i < 0 {
			return ""
		}
		rest = afterScheme[i:]
	}
	rest = strings.TrimRight(rest, "/")
	name, err := url.PathUnescape(rest[strings.LastIndexByte(rest, '/')+1:])
	if err != nil || name == "" {
		return ""
	}
	name = path.Base(name) // an escaped slash in the segment
	if name == "/" || name == "." {
		return ""
	}
	return name
}
