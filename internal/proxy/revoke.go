package proxy

import (
	"sync"
	"sync/atomic"
)

// credentialConns holds the open connections that were admitted with proxy credentials (tunnels,
// upgraded and inspected connections), so that revoking a credential ends them: credentials are
// checked when a connection opens, and a tunnel may stay open for hours after.
type credentialConns struct {
	mu sync.Mutex
	m  map[*credConn]struct{}
}

// credConn is one such connection: who opened it, and how to end it.
type credConn struct {
	session, credential string
	end                 func()
	revoked             atomic.Bool // ended by EndRevoked
}

// add registers a connection of req's, ended by end; nil when req carries no credential.
func (cc *credentialConns) add(req *Request, end func()) *credConn {
	if req.Credential == "" {
		return nil
	}
	c := &credConn{session: req.Session, credential: req.Credential, end: end}
	cc.mu.Lock()
	if cc.m == nil {
		cc.m = map[*credConn]struct{}{}
	}
	cc.m[c] = struct{}{}
	cc.mu.Unlock()
	return c
}

// remove forgets c, a connection that has ended; c may be nil.
func (cc *credentialConns) remove(c *credConn) {
	if c == nil {
		return
	}
	cc.mu.Lock()
	delete(cc.m, c)
	cc.mu.Unlock()
}

// wasRevoked reports whether EndRevoked ended c; c may be nil.
func (c *credConn) wasRevoked() bool { return c != nil && c.revoked.Load() }

// EndRevoked ends every open tunnel, upgraded connection and inspected connection whose session or
// credential revoked names (a revocation list that just changed), and returns how many it ended.
// Their records say ticket_revoked.
func (s *Server) EndRevoked(revoked func(session, credential string) bool) int {
	s.creds.mu.Lock()
	var ended []*credConn
	for c := range s.creds.m {
		if revoked(c.session, c.credential) {
			ended = append(ended, c)
		}
	}
	s.creds.mu.Unlock()
	for _, c := range ended {
		if !c.revoked.Swap(true) {
			c.end()
		}
	}
	return len(ended)
}
