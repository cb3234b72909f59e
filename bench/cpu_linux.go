package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procCPU returns the CPU time, user and system over all its threads, that process pid has used.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (the second field) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	user, err1 := strconv.ParseInt(f[11], 10, 64) // utime, the 14th field, in clock ticks
	sys, err2 := strconv.ParseInt(f[12], 10, 64)  // stime
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(user+sys) * time.Second / 100, true // USER_HZ is 100 on Linux
}

// treeCPU returns the CPU time that the processes pids and their descendants have used (zero for
// none; a process that exits meanwhile is left out); false when /proc cannot be listed.
func treeCPU(pids []int) (time.Duration, bool) {
	all, err := descendants(pids)
	if err != nil {
		return 0, false
	}
	var sum time.Duration
	for _, pid := range all {
		if t, ok := procCPU(pid); ok {
			sum += t
		}
	}
	return sum, true
}
