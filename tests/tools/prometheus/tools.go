//go:build tools

// Package tools pins a command built by tests/tools/build.sh.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
