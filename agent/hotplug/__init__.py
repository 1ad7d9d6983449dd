"""CPU and memory hotplug: onlining driven by kernel uevents and sysfs re-scans, within budgets.

- ``uevent``: the kernel's NETLINK_KOBJECT_UEVENT messages, parsed, and a listener with subscriptions
  (also used by storage to wait for block devices);
- ``budget``: the ``agent.{cpu,mem}_online_*`` options and the clock the loop waits on;
- ``cpu``, ``memory``: one scan-and-write step each, on ``HostPaths`` so tests use a fake tree;
- ``online``: the single online loop (requests merge into a running loop; wait=false outcomes are
  reported to the next call);
- ``cpuset``: "0-3,7" parsing and formatting, and cpuset propagation from the top of the hierarchy down;
- ``testing``: a fake sysfs tree and a simulated clock for tests and benchmarks.

See README.md in this directory for the options and their defaults.
"""
