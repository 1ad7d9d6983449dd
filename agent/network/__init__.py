"""Guest networking: links, addresses, routes and neighbours over netlink (pyroute2, imported only
when a network call comes), resolv.conf for the sandbox, and iptables through its save/restore tools.
Domain types live in ``types``; the RPC layer converts protobuf to them."""
