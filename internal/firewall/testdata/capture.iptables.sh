#!/bin/sh
# swarm-proxy firewall: egress rules for the agent's network namespace or container.
# Allowed: replies, loopback, anything from uid 65532. Everything else, IPv4 and IPv6, is rejected.
# Transparent capture: TCP is redirected to port 15001, DNS (UDP and TCP 53) to port 15053 of this namespace, except loopback and the --allow-uid users.
# Running it again is harmless: the chain SWARM-PROXY-EGRESS is replaced atomically and OUTPUT jumps to it once.
set -e
iptables-restore --noflush <<'EOF'
*filter
:SWARM-PROXY-EGRESS - [0:0]
-A SWARM-PROXY-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "replies to connections already allowed" -j ACCEPT
-A SWARM-PROXY-EGRESS -p tcp --dport 15001 -m conntrack --ctstate DNAT -m comment --comment "TCP redirected to the transparent listener on port 15001" -j ACCEPT
-A SWARM-PROXY-EGRESS -p udp --dport 15053 -m conntrack --ctstate DNAT -m comment --comment "DNS over udp redirected to the DNS guard on port 15053" -j ACCEPT
-A SWARM-PROXY-EGRESS -p tcp --dport 15053 -m conntrack --ctstate DNAT -m comment --comment "DNS over tcp redirected to the DNS guard on port 15053" -j ACCEPT
-A SWARM-PROXY-EGRESS -m owner --uid-owner 65532 -m comment --comment "processes of uid 65532 (--allow-uid: the proxy in this namespace)" -j ACCEPT
-A SWARM-PROXY-EGRESS -o lo -m comment --comment "loopback: the agent's own local services" -j ACCEPT
-A SWARM-PROXY-EGRESS -p tcp -m comment --comment "any other TCP: refused at once so tools fail fast, not hang" -j REJECT --reject-with tcp-reset
-A SWARM-PROXY-EGRESS -m comment --comment "anything else: the agent goes out only through the proxy" -j REJECT --reject-with icmp-admin-prohibited
COMMIT
*nat
:SWARM-PROXY-CAPTURE - [0:0]
-A SWARM-PROXY-CAPTURE -m owner --uid-owner 65532 -m comment --comment "uid 65532 (--allow-uid: the proxy) is not redirected, so it does not loop" -j RETURN
-A SWARM-PROXY-CAPTURE -p udp --dport 53 -m comment --comment "DNS over udp to the DNS guard, loopback resolvers included" -j REDIRECT --to-ports 15053
-A SWARM-PROXY-CAPTURE -p tcp --dport 53 -m comment --comment "DNS over tcp to the DNS guard, loopback resolvers included" -j REDIRECT --to-ports 15053
-A SWARM-PROXY-CAPTURE -o lo -m comment --comment "loopback stays local: the agent's own services and the proxy's listeners" -j RETURN
-A SWARM-PROXY-CAPTURE -p tcp -m comment --comment "every other TCP connection goes to the transparent listener" -j REDIRECT --to-ports 15001
COMMIT
EOF
iptables -C OUTPUT -j SWARM-PROXY-EGRESS 2>/dev/null || iptables -I OUTPUT 1 -j SWARM-PROXY-EGRESS
iptables -t nat -C OUTPUT -j SWARM-PROXY-CAPTURE 2>/dev/null || iptables -t nat -I OUTPUT 1 -j SWARM-PROXY-CAPTURE
ip6tables-restore --noflush <<'EOF'
*filter
:SWARM-PROXY-EGRESS - [0:0]
-A SWARM-PROXY-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "replies to connections already allowed" -j ACCEPT
-A SWARM-PROXY-EGRESS -d ff02::1:ff00:0/104 -p ipv6-icmp --icmpv6-type neighbour-solicitation -m hl --hl-eq 255 -m comment --comment "IPv6 neighbour solicitation to ff02::1:ff00:0/104, hop limit 255 (neighbour discovery only)" -j ACCEPT
-A SWARM-PROXY-EGRESS -d fe80::/10 -p ipv6-icmp --icmpv6-type neighbour-solicitation -m hl --hl-eq 255 -m comment --comment "IPv6 neighbour solicitation to fe80::/10, hop limit 255 (neighbour discovery only)" -j ACCEPT
-A SWARM-PROXY-EGRESS -d ff02::1/128 -p ipv6-icmp --icmpv6-type neighbour-advertisement -m hl --hl-eq 255 -m comment --comment "IPv6 neighbour advertisement to ff02::1/128, hop limit 255 (neighbour discovery only)" -j ACCEPT
-A SWARM-PROXY-EGRESS -d fe80::/10 -p ipv6-icmp --icmpv6-type neighbour-advertisement -m hl --hl-eq 255 -m comment --comment "IPv6 neighbour advertisement to fe80::/10, hop limit 255 (neighbour discovery only)" -j ACCEPT
-A SWARM-PROXY-EGRESS -p tcp --dport 15001 -m conntrack --ctstate DNAT -m comment --comment "TCP redirected to the transparent listener on port 15001" -j ACCEPT
-A SWARM-PROXY-EGRESS -p udp --dport 15053 -m conntrack --ctstate DNAT -m comment --comment "DNS over udp redirected to the DNS guard on port 15053" -j ACCEPT
-A SWARM-PROXY-EGRESS -p tcp --dport 15053 -m conntrack --ctstate DNAT -m comment --comment "DNS over tcp redirected to the DNS guard on port 15053" -j ACCEPT
-A SWARM-PROXY-EGRESS -m owner --uid-owner 65532 -m comment --comment "processes of uid 65532 (--allow-uid: the proxy in this namespace)" -j ACCEPT
-A SWARM-PROXY-EGRESS -o lo -m comment --comment "loopback: the agent's own local services" -j ACCEPT
-A SWARM-PROXY-EGRESS -p tcp -m comment --comment "any other TCP: refused at once so tools fail fast, not hang" -j REJECT --reject-with tcp-reset
-A SWARM-PROXY-EGRESS -m comment --comment "anything else: the agent goes out only through the proxy" -j REJECT --reject-with icmp6-adm-prohibited
COMMIT
*nat
:SWARM-PROXY-CAPTURE - [0:0]
-A SWARM-PROXY-CAPTURE -m owner --uid-owner 65532 -m comment --comment "uid 65532 (--allow-uid: the proxy) is not redirected, so it does not loop" -j RETURN
-A SWARM-PROXY-CAPTURE -p udp --dport 53 -m comment --comment "DNS over udp to the DNS guard, loopback resolvers included" -j REDIRECT --to-ports 15053
-A SWARM-PROXY-CAPTURE -p tcp --dport 53 -m comment --comment "DNS over tcp to the DNS guard, loopback resolvers included" -j REDIRECT --to-ports 15053
-A SWARM-PROXY-CAPTURE -o lo -m comment --comment "loopback stays local: the agent's own services and the proxy's listeners" -j RETURN
-A SWARM-PROXY-CAPTURE -p tcp -m comment --comment "every other TCP connection goes to the transparent listener" -j REDIRECT --to-ports 15001
COMMIT
EOF
ip6tables -C OUTPUT -j SWARM-PROXY-EGRESS 2>/dev/null || ip6tables -I OUTPUT 1 -j SWARM-PROXY-EGRESS
ip6tables -t nat -C OUTPUT -j SWARM-PROXY-CAPTURE 2>/dev/null || ip6tables -t nat -I OUTPUT 1 -j SWARM-PROXY-CAPTURE
