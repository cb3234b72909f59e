//go:build !linux

package main

import "time"

// procCPU reads a process's CPU time from /proc, which only Linux has.
func procCPU(int) (time.Duration, bool) { return 0, false }

// treeCPU reads processes' CPU time from /proc, which only Linux has.
func treeCPU([]int) (time.Duration, bool) { return 0, false }
