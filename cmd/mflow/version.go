package main

import "runtime/debug"

// release is the version of mflow this source is, or is on its way to: packages and images carry it.
const release = "1.0.0"

// version is set at build time with -ldflags "-X main.version=…"; else the module version, if any.
var version = ""

// versionString is the version: the one set at build time, else the module's, else the release with
// "-dev" and the commit the binary was built from (and "dirty" when the checkout had changes), as go build
// records it unless told -buildvcs=false.
func versionString() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return release + "-dev"
	}
	if info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return devVersion(info.Settings)
}

// devVersion is the release with "-dev", and the commit from a build's VCS settings when there is one.
func devVersion(settings []debug.BuildSetting) string {
	var commit, dirty string
	for _, s := range settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 12:
			commit = s.Value[:12]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "-dirty"
		}
	}
	if commit == "" {
		return release + "-dev"
	}
	return release + "-dev+" + commit + dirty
}
