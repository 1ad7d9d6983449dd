"""The container engine (no grpc here). Public API: agent/container/engine.py.

How a container comes to be (create, then start):

1. ``spec.parse_spec`` reshapes config.json; ``validate.validate_spec`` runs its ordered checks.
   Nothing has touched the host yet.
2. ``rootfs.plan_rootfs`` turns the mounts, devices and /dev links into a list of operations (data:
   ``RootfsPlan.describe()`` prints it). Mount options are agent/system/mountopts.py's: mount(8)'s
   words, propagation, the recursive attributes (``rro``... a ``SetAttr`` step: mount_setattr(2)
   with AT_RECURSIVE) and ``tmpcopyup`` (a tmpfs mounted with a copy of what it covers).
   features.py derives runtime-spec's features document from these tables.
3. The fork server (forkserver.py, a single-threaded ``python -m`` helper spawned on first use: the
   agent runs threads and never forks) forks a shim per process. The shim opens the cgroup
   hierarchies' roots, enters the user and pid namespaces, forks the container process, reports its
   pid, and later its exit status (128+N for a signal), reaping every orphan as a child subreaper;
   it holds the container's mount namespace until it has reported the exit (init.namespace_keeper).
   Most creates skip both forks: a warm shim and container process (new pid namespace) wait for
   them (warm.py's WarmPair), and while it waits the container process faults in the pages the last
   set-ups wrote (agent/system/prefault.py) and makes the network, IPC and UTS namespaces the last
   creates asked for (init.prepare_warm_child). ``pykata-runc`` is single-threaded and forks the
   shim itself (cli_backend.LocalForkServer); a cold ``create`` forks a warm pair as soon as it has
   read the spec, so the pair's imports and namespaces overlap the engine's work. The engine makes
   the cgroup before it sends the request and applies the resources (cgroups/) while the process
   sets up.
4. The container process (init.py) joins its cgroup by itself, first thing (cgroup v1's ``tasks``
   or v2's ``cgroup.procs``, "0": no pid round trip, and on v1 no wait for the kernel's global
   cgroup lock; in a user namespace the engine moves it by pid and then says ``g``), unshares or
   joins the other namespaces, sets hostname and sysctls and executes the mount plan. When the spec
   has prestart or createRuntime hooks it reports "mounted" and the engine runs them (runtime
   namespace) before it says ``h``; the process then runs the createContainer hooks itself (in the
   container's namespaces, before the root changes), enters the root (pivot_root, or MS_MOVE +
   chroot on an initramfs where pivot_root cannot work), masks paths, makes the root read-only,
   takes its stdio, rlimits, user and capabilities, reports "created" and waits.
5. start: "start" (through the control pipe, or a FIFO for a CLI whose start is another process);
   the process runs the startContainer hooks (in the container, after the root changed; with such
   hooks, or a seccomp filter without no_new_privileges, it takes its stdio, limits, user and
   capabilities only now), loads its seccomp filter and execs. poststart hooks run in the runtime's
   namespaces once it started, poststop once it is gone. The engine learns of every event through
   the process's status pipe, read by the agent's one reactor thread (agent/system/reactor.py).

Seccomp: seccomp.py compiles the profile to classic BPF in the engine; the container process loads
it with prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) (seccomp(2) when the profile has filter flags)
right before execve when no_new_privileges is set, else before dropping capabilities (the kernel
wants CAP_SYS_ADMIN then), as runc does. A profile with SCMP_ACT_NOTIFY rules is loaded before the
process reports "created", with a listener the process passes back over a socket pair; the engine
sends it to the seccomp agent at ``listenerPath`` with the container process state, and a create
(or exec) whose agent cannot be reached fails and leaves nothing.
Exec joins the container's namespaces with setns on /proc/<pid>/ns/* and its root through
/proc/<pid>/root, and joins the container's cgroup (or sub-cgroups of it that exist: ``pykata-runc
exec --cgroup``) before it runs anything (by pid, from the engine, when the container has a user or
cgroup namespace).
"""
