/*
 * Escape probe for tests/escape.rs: runs one system call inside a sandbox and
 * prints "ok" when it succeeds or the errno name (EPERM, ENOSYS, ...) when it
 * fails, so the tests compare exact kernel answers instead of tool messages.
 *
 * usage: probe OPERATION [ARG]
 * Built by the test with `cc -static`, bound into the sandbox read-only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/reboot.h>
#include <linux/sched.h>

static int report(long result)
{
	if (result < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	printf("ok\n");
	return 0;
}

/* clone with FLAGS through the raw system call; the child exits at once. */
static int probe_clone(unsigned long flags)
{
	long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	return report(pid);
}

static int probe_clone3(void)
{
	struct clone_args args;
	memset(&args, 0, sizeof(args));
	args.exit_signal = SIGCHLD;
	long pid = syscall(SYS_clone3, &args, sizeof(args));
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	return report(pid);
}

static int probe_write(const char *path, int flags)
{
	int fd = open(path, O_WRONLY | flags, 0644);
	if (fd < 0)
		return report(-1);
	long written = write(fd, "1", 1);
	close(fd);
	return report(written);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: probe OPERATION [ARG]\n");
		return 2;
	}
	const char *op = argv[1];
	const char *arg = argc > 2 ? argv[2] : "";

	if (!strcmp(op, "fork"))
		return probe_clone(0);
	if (!strcmp(op, "clone-newuser"))
		return probe_clone(CLONE_NEWUSER);
	if (!strcmp(op, "clone-newnet"))
		return probe_clone(CLONE_NEWNET);
	if (!strcmp(op, "clone3"))
		return probe_clone3();
	if (!strcmp(op, "unshare-user"))
		return report(unshare(CLONE_NEWUSER));
	if (!strcmp(op, "mount"))
		return report(mount("none", "/mnt", "tmpfs", 0, NULL));
	if (!strcmp(op, "umount"))
		return report(umount2("/proc", MNT_DETACH));
	if (!strcmp(op, "setns")) {
		int fd = open("/proc/self/ns/mnt", O_RDONLY);
		if (fd < 0)
			return report(-1);
		return report(setns(fd, 0));
	}
	if (!strcmp(op, "pivot_root"))
		return report(syscall(SYS_pivot_root, "/", "/"));
	if (!strcmp(op, "ptrace"))
		return report(ptrace(PTRACE_ATTACH, atoi(arg), 0, 0));
	if (!strcmp(op, "keyctl"))
		/* KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING */
		return report(syscall(SYS_keyctl, 0, -3, 0));
	if (!strcmp(op, "bpf"))
		/* BPF_MAP_CREATE with an empty attribute */
		return report(syscall(SYS_bpf, 0, NULL, 0));
	if (!strcmp(op, "init_module"))
		return report(syscall(SYS_init_module, NULL, 0, ""));
	if (!strcmp(op, "finit_module"))
		return report(syscall(SYS_finit_module, 0, "", 0));
	if (!strcmp(op, "reboot"))
		/* LINUX_REBOOT_CMD_CAD_OFF only disables Ctrl-Alt-Del. */
		return report(syscall(SYS_reboot, LINUX_REBOOT_MAGIC1,
				      LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_OFF, NULL));
	if (!strcmp(op, "raw-socket"))
		return report(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
	if (!strcmp(op, "vsock"))
		return report(socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
	if (!strcmp(op, "personality")) {
		/* personality returns the previous persona, never negative on success. */
		return report(personality(strtoul(arg, NULL, 0)));
	}
	if (!strcmp(op, "write"))
		return probe_write(arg, 0);
	if (!strcmp(op, "create"))
		return probe_write(arg, O_CREAT);
	fprintf(stderr, "probe: unknown operation %s\n", op);
	return 2;
}
