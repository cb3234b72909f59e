//go:build !linux

package main

import (
	"context"
	"fmt"
)

// netnsPath needs Linux network namespaces.
func netnsPath(context.Context, env, bool) (*path, error) {
	return nil, fmt.Errorf("%w: network namespaces need Linux", errNotInstalled)
}
