package main

// A container built FROM scratch, and some NAS systems, have neither CA certificates nor time zones. The
// binary carries both, and uses them only where the system has none.
import (
	_ "time/tzdata"

	_ "golang.org/x/crypto/x509roots/fallback"
)
