//go:build tools

// Package tools pins a command built by tests/tools/build.sh.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
