"""The container engine (no grpc here). Public API: agent/container/engine.py.

How a container comes to be (create, then start):

1. ``spec.parse_spec`` reshapes config.json; ``validate.validate_spec`` runs its ordered checks.
   Nothing has touched the host yet.
2. ``rootfs.plan_rootfs`` turns the mounts, devices and /dev links into a list of operations (data:
   ``RootfsPlan.describe()`` prints it); the cgroup is made and the resources applied (cgroups/).
3. The fork server (forkserver.py, a single-threaded ``python -m`` helper spawned on first use: the
   agent runs threads and never forks) forks a shim per process. The shim enters the user and pid
   namespaces, forks the container process, reports its pid, and later its exit status (128+N for a
   signal), reaping every orphan as a child subreaper.
4. The engine puts the pid in the cgroup and says "go"; the container process (init.py) unshares or
   joins the other namespaces, sets hostname and sysctls, executes the mount plan, enters the root
   (pivot_root, or MS_MOVE + chroot on an initramfs where pivot_root cannot work), masks paths and
   makes the root read-only, reports "created" and waits.
5. start: startContainer hooks, then "start" (through the control pipe, or a FIFO for a CLI whose
   start is another process); the process takes its stdio, rlimits, user, capabilities (all five
   sets), no_new_privileges and seccomp filter, and execs.

Seccomp: seccomp.py compiles the profile to classic BPF in the engine; the container process loads
it with prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) right before execve when no_new_privileges is set,
else before dropping capabilities (the kernel wants CAP_SYS_ADMIN then), as runc does.
Exec joins the container's namespaces with setns on /proc/<pid>/ns/* and its root through
/proc/<pid>/root, and is put in the container's cgroup before it runs anything.
"""
