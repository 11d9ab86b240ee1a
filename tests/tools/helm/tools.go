//go:build tools

// Package tools pins a command built by tests/tools/build.sh.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
