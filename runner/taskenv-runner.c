/* taskenv-runner: starts and supervises commands inside a sandbox for the host's worker.
 *
 * It talks length-prefixed frames on its stdin and stdout (runner/PROTOCOL.md): the worker
 * starts it with `docker exec`, either with stdin attached, or detached with `--connect PATH`:
 * then it connects to the worker's unix socket at PATH (in a directory the sandbox sees
 * read-only) and speaks the same frames over it, as if the socket were its stdin and stdout. Each
 * command is `/bin/sh -c <command>` in a session of its own, stdin /dev/null, stdout and
 * stderr one pipe, its output capped here (what is dropped is counted, never sent). A command
 * is done when its shell exits: what is in its pipe then is sent, then its exit frame; a
 * background child holding the pipe is read and discarded until it lets go. A kill stops and
 * then kills the command's whole tree, found in the sandbox's PID namespace: its session, its
 * process group, their descendants, and every process carrying the command's tag group (a
 * double-forked, `setsid` escapee is reparented to us, the subreaper, and keeps its groups).
 * A command runs with the container's environment, overridden by the variables its START
 * carries. When the worker goes away (its stream ends) every command is killed.
 *
 * Everything here can be replaced by the sandbox (same uid): the host trusts nothing it says
 * beyond its own environment, and enforces deadlines itself. Keep it small and boring. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION 2
#define HEADER 4                 /* u32 body length, big-endian */
#define BODY_MIN 5               /* u8 type, u32 command id */
#define MAX_WORKDIR 4096
#define MAX_COMMAND (128 * 1024) /* the kernel's limit on one argv string */
#define MAX_USER 256
#define MAX_ENV (64 * 1024) /* the command's variables: `KEY=VALUE\0` entries */
#define MAX_ENV_ENTRIES 256
#define START_HEAD 12      /* u32 output limit, u16 workdir length, u16 user length, u32 env length */
#define MAX_BODY_IN (BODY_MIN + START_HEAD + MAX_WORKDIR + MAX_USER + MAX_ENV + MAX_COMMAND)
#define OUTPUT_CHUNK 32768
#define MAX_ACTIVE 256   /* commands running at once */
#define MAX_SLOTS 1024   /* running commands plus pipes still held by background children */
#define MAX_ERROR 512
#define KILL_ROUNDS 20
#define STATUS_READ 8192
/* Each command's processes carry a supplementary group of their own: TAG_BASE, then 20 bits of
 * the runner's pid (two runners may serve one sandbox), then the slot. */
#define TAG_BASE 0x80000000u

enum { START = 0x01, KILL = 0x02, HELLO = 0x81, OUTPUT = 0x82, EXIT = 0x83, ERROR = 0x84 };
enum { EXITED = 0, SIGNALED = 1, KILLED = 2 };

struct slot {
    int active;     /* the id is live: its exit frame is not sent yet */
    uint32_t id;
    pid_t pid;      /* the shell, until reaped */
    int fd;         /* the output pipe, until every writer has closed it */
    int report;     /* why the start failed, written by the child before its exec; until reaped */
    int killed;
    uint32_t limit;
    uint64_t kept, dropped;
};

static struct slot slots[MAX_SLOTS];
static unsigned char inbuf[HEADER + MAX_BODY_IN];
static size_t inlen;
static unsigned char chunk[OUTPUT_CHUNK];
static pid_t self;
static char **base_env;
static char root_home[MAX_WORKDIR] = "/root";

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void kill_everything(void);

static void send_frame(int type, uint32_t id, const void *payload, size_t len) {
    unsigned char head[HEADER + BODY_MIN];
    put32(head, (uint32_t)(BODY_MIN + len));
    head[4] = (unsigned char)type;
    put32(head + 5, id);
    struct iovec iov[2] = {{head, sizeof head}, {(void *)payload, len}};
    int n = len ? 2 : 1;
    struct iovec *v = iov;
    while (n > 0) {
        ssize_t w = writev(1, v, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { kill_everything(); _exit(0); } /* the worker is gone */
        while (n > 0 && (size_t)w >= v->iov_len) { w -= v->iov_len; v++; n--; }
        if (n > 0) { v->iov_base = (char *)v->iov_base + w; v->iov_len -= w; }
    }
}

static void send_error(uint32_t id, const char *message) {
    size_t len = strlen(message);
    send_frame(ERROR, id, message, len > MAX_ERROR ? MAX_ERROR : len);
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (56 - 8 * i));
}

/* A command that could not be started answers as `docker exec` does: 126 and the reason. */
static void start_failed(uint32_t id, uint32_t limit, const char *why) {
    char message[MAX_ERROR + 64];
    int len = snprintf(message, sizeof message, "taskenv-runner: cannot start the command: %s\n", why);
    size_t size = len < 0 ? 0 : (size_t)len < sizeof message ? (size_t)len : sizeof message - 1;
    size_t kept = size < limit ? size : limit;
    if (kept) send_frame(OUTPUT, id, message, kept);
    unsigned char p[10] = {EXITED, 126};
    put64(p + 2, size - kept);
    send_frame(EXIT, id, p, sizeof p);
}

static void send_exit(struct slot *s, int status) {
    unsigned char p[10];
    int reason = s->killed ? KILLED : WIFSIGNALED(status) ? SIGNALED : EXITED;
    /* As runc reports an exec's end: 128 + the signal for a killed shell. */
    p[0] = (unsigned char)reason;
    p[1] = (unsigned char)(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
    put64(p + 2, s->dropped);
    send_frame(EXIT, s->id, p, sizeof p);
    s->active = 0;
}

/* Output of a live command is sent up to its cap and counted beyond it; a finished command's
 * background children are read and discarded, so they never block on a full pipe. */
static void emit(struct slot *s, size_t n) {
    if (!s->active) return;
    uint64_t room = s->limit > s->kept ? s->limit - s->kept : 0;
    size_t sent = n < room ? n : (size_t)room;
    if (sent) send_frame(OUTPUT, s->id, chunk, sent);
    s->kept += sent;
    s->dropped += n - sent;
}

/* Read what the pipe holds now; returns 0 once every writer has closed it. */
static int pump(struct slot *s, int until_empty) {
    do {
        ssize_t n = read(s->fd, chunk, sizeof chunk);
        if (n > 0) { emit(s, (size_t)n); continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 1;
        close(s->fd);
        s->fd = -1;
        return 0;
    } while (until_empty);
    return 1;
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_SLOTS; i++) {
            struct slot *s = &slots[i];
            if (!s->active || s->pid != pid) continue;
            s->pid = 0;
            /* The child is gone, so this read returns at once: its reason, or nothing (it ran). */
            char why[MAX_ERROR];
            ssize_t n = read(s->report, why, sizeof why - 1);
            close(s->report);
            s->report = -1;
            if (n > 0) {
                why[n] = 0;
                start_failed(s->id, s->limit, why);
                s->active = 0;
                break;
            }
            /* All the shell wrote is in the pipe: send it, then the end. */
            if (s->fd >= 0) pump(s, 1);
            send_exit(s, status);
            break;
        }
        /* Anything else is an orphan reparented to us (we are the subreaper): just reaped. */
    }
}

/* ---- killing a command's tree ---- */

struct proc { pid_t pid, ppid, pgrp, sid; int taken; };

static int read_stat(pid_t pid, struct proc *p) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    char state;
    int ppid, pgrp, sid;
    if (!close_paren || sscanf(close_paren + 1, " %c %d %d %d", &state, &ppid, &pgrp, &sid) != 4) return 0;
    if (state == 'Z') return 0;
    p->pid = pid; p->ppid = ppid; p->pgrp = pgrp; p->sid = sid; p->taken = 0;
    return 1;
}

/* Whether the process's supplementary groups hold the tag (its status is readable by all). */
static int tagged(pid_t pid, gid_t tag) {
    static char status[STATUS_READ];
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, status, sizeof status - 1);
    close(fd);
    if (n <= 0) return 0;
    status[n] = 0;
    char *groups = strstr(status, "\nGroups:");
    if (!groups) return 0;
    char *end = strchr(groups + 1, '\n'), *p = groups + 8;
    while (p && (!end || p < end)) {
        char *next;
        unsigned long g = strtoul(p, &next, 10);
        if (next == p) break;
        if (g == tag) return 1;
        p = next;
    }
    return 0;
}

static size_t scan(struct proc **procs, size_t *cap) {
    size_t count = 0;
    DIR *dir = opendir("/proc");
    if (!dir) return 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || pid == self) continue;
        if (count == *cap) {
            size_t bigger = *cap ? *cap * 2 : 256;
            struct proc *grown = realloc(*procs, bigger * sizeof **procs);
            if (!grown) break;
            *procs = grown;
            *cap = bigger;
        }
        if (read_stat((pid_t)pid, &(*procs)[count])) count++;
    }
    closedir(dir);
    return count;
}

static int member(const pid_t *set, size_t n, pid_t pid) {
    for (size_t i = 0; i < n; i++) if (set[i] == pid) return 1;
    return 0;
}

static gid_t tag_of(int index) {
    return TAG_BASE + (((uint32_t)self & 0xFFFFFu) << 10) + (uint32_t)index;
}

/* Stop everything of the tree until no new process appears (stopped ones cannot fork), then
 * kill it all. */
static void kill_tree(pid_t leader, gid_t tag) {
    static struct proc *procs;
    static size_t cap;
    pid_t *found = NULL;
    size_t nfound = 0, found_cap = 0;
    for (int round = 0; round < KILL_ROUNDS; round++) {
        size_t count = scan(&procs, &cap), fresh = 0;
        for (int grew = 1; grew;) {
            grew = 0;
            for (size_t i = 0; i < count; i++) {
                struct proc *p = &procs[i];
                if (p->taken || member(found, nfound, p->pid)) continue;
                if (!(p->pid == leader || p->pgrp == leader || p->sid == leader ||
                      member(found, nfound, p->ppid) || tagged(p->pid, tag)))
                    continue;
                if (nfound == found_cap) {
                    size_t bigger = found_cap ? found_cap * 2 : 64;
                    pid_t *grown = realloc(found, bigger * sizeof *found);
                    if (!grown) goto kill_found;
                    found = grown;
                    found_cap = bigger;
                }
                found[nfound++] = p->pid;
                p->taken = 1;
                kill(p->pid, SIGSTOP);
                fresh++;
                grew = 1;
            }
        }
        if (!fresh) break;
    }
kill_found:
    for (size_t i = 0; i < nfound; i++) kill(found[i], SIGKILL);
    kill(leader, SIGKILL);
    free(found);
}

static void kill_everything(void) {
    for (int i = 0; i < MAX_SLOTS; i++)
        if (slots[i].active && slots[i].pid > 0) kill_tree(slots[i].pid, tag_of(i));
}

/* ---- starting a command ---- */

static struct slot *find(uint32_t id) {
    for (int i = 0; i < MAX_SLOTS; i++)
        if (slots[i].active && slots[i].id == id) return &slots[i];
    return NULL;
}

/* The `name:x:id:gid:gecos:home:shell` line of /etc/passwd (or /etc/group) whose name or id
 * matches; fields split in place in `line`. */
static int lookup(const char *file, const char *key, char *line, size_t size, char **field, int nfields) {
    FILE *f = fopen(file, "re");
    if (!f) return 0;
    int found = 0;
    while (!found && fgets(line, (int)size, f)) {
        line[strcspn(line, "\n")] = 0;
        int n = 0;
        for (char *p = line; n < nfields; n++) {
            field[n] = p;
            p = strchr(p, ':');
            if (!p) { n++; break; }
            *p++ = 0;
        }
        found = n >= 3 && (strcmp(field[0], key) == 0 || strcmp(field[2], key) == 0);
        for (; n < nfields; n++) field[n] = "";
    }
    fclose(f);
    return found;
}

static int numeric(const char *s, unsigned long *out) {
    char *end;
    if (!*s || *s < '0' || *s > '9') return 0;
    errno = 0;
    *out = strtoul(s, &end, 10);
    return !*end && !errno && *out < 0xFFFFFFFFul;
}

/* `user[:group]` as Docker reads it, by name or number, in the sandbox's own files. */
static int resolve(const char *spec, uid_t *uid, gid_t *gid, char *home, size_t home_size) {
    char user[256], line[1024], *field[7];
    const char *colon = strchr(spec, ':');
    size_t ulen = colon ? (size_t)(colon - spec) : strlen(spec);
    if (ulen == 0 || ulen >= sizeof user) return 0;
    memcpy(user, spec, ulen);
    user[ulen] = 0;
    unsigned long n;
    int known = lookup("/etc/passwd", user, line, sizeof line, field, 7);
    if (known && numeric(field[2], &n)) *uid = (uid_t)n;
    else if (numeric(user, &n)) *uid = (uid_t)n;
    else return 0;
    *gid = known && numeric(field[3], &n) ? (gid_t)n : 0;
    snprintf(home, home_size, "%s", known && *field[5] ? field[5] : "/");
    if (colon) {
        if (lookup("/etc/group", colon + 1, line, sizeof line, field, 4) && numeric(field[2], &n)) *gid = (gid_t)n;
        else if (numeric(colon + 1, &n)) *gid = (gid_t)n;
        else return 0;
    }
    return 1;
}

/* Whether `entry` is `KEY=VALUE` with KEY a shell identifier; its key's length in `*klen`. */
static int env_entry(const char *entry, size_t *klen) {
    size_t k = 0;
    while ((entry[k] >= 'A' && entry[k] <= 'Z') || (entry[k] >= 'a' && entry[k] <= 'z') || entry[k] == '_' ||
           (k > 0 && entry[k] >= '0' && entry[k] <= '9'))
        k++;
    *klen = k;
    return k > 0 && entry[k] == '=';
}

/* The START's variables, `KEY=VALUE\0` each (NULs only as terminators), split in place into
 * `vars`; 0 for a malformed block: a bad key, an unterminated entry, too many, a key twice. */
static int split_env(char *block, size_t len, char **vars, size_t *count) {
    size_t n = 0;
    if (len && block[len - 1] != 0) return 0;
    for (size_t at = 0; at < len; at += strlen(block + at) + 1) {
        size_t klen;
        if (n == MAX_ENV_ENTRIES || !env_entry(block + at, &klen)) return 0;
        for (size_t i = 0; i < n; i++)
            if (strncmp(vars[i], block + at, klen + 1) == 0) return 0;
        vars[n++] = block + at;
    }
    *count = n;
    return 1;
}

static int overridden(const char *entry, char **vars, size_t nvars) {
    size_t klen;
    if (!env_entry(entry, &klen)) return 0;
    for (size_t i = 0; i < nvars; i++)
        if (strncmp(vars[i], entry, klen + 1) == 0) return 1;
    return 0;
}

/* The container's environment, each variable the START names replaced by its value. The runner
 * runs as root and commands as their user: Docker's per-user HOME, unless the sandbox's
 * environment or the START set one. */
static char **command_env(const char *home, char **vars, size_t nvars) {
    size_t n = 0;
    while (base_env[n]) n++;
    char **envp = malloc((n + nvars + 1) * sizeof *envp);
    if (!envp) return NULL;
    static char home_var[4200];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (overridden(base_env[i], vars, nvars)) continue;
        if (strncmp(base_env[i], "HOME=", 5) == 0 && home && strcmp(base_env[i] + 5, root_home) == 0) {
            snprintf(home_var, sizeof home_var, "HOME=%s", home);
            envp[k++] = home_var;
        } else {
            envp[k++] = base_env[i];
        }
    }
    for (size_t i = 0; i < nvars; i++) envp[k++] = vars[i];
    envp[k] = NULL;
    return envp;
}

/* In the child, between fork and exec: report the failing step to the parent and end. */
static void fail(int report, const char *step) {
    char message[MAX_ERROR];
    int len = snprintf(message, sizeof message, "%s: %s", step, strerror(errno));
    if (write(report, message, (size_t)len) < 0) {}
    _exit(127);
}

static void start(uint32_t id, const unsigned char *p, size_t len) {
    if (len < START_HEAD) { send_error(id, "start: payload too short"); return; }
    uint32_t limit = get32(p);
    size_t wlen = (size_t)p[4] << 8 | p[5], ulen = (size_t)p[6] << 8 | p[7], elen = get32(p + 8);
    if (wlen == 0 || wlen > MAX_WORKDIR || ulen == 0 || ulen > MAX_USER || START_HEAD + wlen + ulen > len) {
        send_error(id, "start: bad workdir or user");
        return;
    }
    if (elen > MAX_ENV || START_HEAD + wlen + ulen + elen > len) {
        send_error(id, "start: bad environment length");
        return;
    }
    const unsigned char *w = p + START_HEAD, *u = w + wlen, *e = u + ulen, *c = e + elen;
    size_t clen = len - START_HEAD - wlen - ulen - elen;
    if (clen >= MAX_COMMAND) { send_error(id, "start: command too long"); return; }
    if (memchr(w, 0, wlen + ulen) || memchr(c, 0, clen)) {
        send_error(id, "start: NUL byte in the request");
        return;
    }
    if (find(id)) { send_error(id, "start: command id in use"); return; }
    static char env_block[MAX_ENV];
    static char *vars[MAX_ENV_ENTRIES];
    size_t nvars = 0;
    memcpy(env_block, e, elen);
    if (!split_env(env_block, elen, vars, &nvars)) { send_error(id, "start: malformed environment"); return; }
    int active = 0, index = -1;
    for (int i = 0; i < MAX_SLOTS; i++) {
        if (slots[i].active) active++;
        else if (index < 0 && slots[i].fd < 0) index = i;
    }
    if (active >= MAX_ACTIVE || index < 0) { send_error(id, "start: too many commands"); return; }

    static char workdir[MAX_WORKDIR + 1], user[MAX_USER + 1], command[MAX_COMMAND], home[MAX_WORKDIR];
    memcpy(workdir, w, wlen); workdir[wlen] = 0;
    memcpy(user, u, ulen); user[ulen] = 0;
    memcpy(command, c, clen); command[clen] = 0;
    uid_t uid;
    gid_t gid;
    if (!resolve(user, &uid, &gid, home, sizeof home)) { start_failed(id, limit, "unknown user"); return; }
    char **envp = command_env(home, vars, nvars);
    if (!envp) { start_failed(id, limit, "out of memory"); return; }
    int out[2], report[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        free(envp);
        start_failed(id, limit, strerror(errno));
        return;
    }
    if (pipe2(report, O_CLOEXEC) < 0) {
        start_failed(id, limit, strerror(errno));
        close(out[0]);
        close(out[1]);
        free(envp);
        return;
    }
    gid_t tag = tag_of(index);
    char *argv[] = {"sh", "-c", command, NULL};
    pid_t pid = fork();
    int fork_errno = errno;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(out[1], 1) < 0 || dup2(out[1], 2) < 0) fail(report[1], "stdio");
        if (setsid() < 0) fail(report[1], "setsid");
        /* The tag: a supplementary group the command's processes cannot drop (no CAP_SETGID). */
        gid_t groups[2] = {gid, tag};
        if (setgroups(2, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0) fail(report[1], "user");
        if (chdir(workdir) < 0) fail(report[1], "workdir");
        execve("/bin/sh", argv, envp);
        fail(report[1], "/bin/sh");
    }
    /* Not waiting here for the exec: a failure comes back through `report` when it is reaped. */
    free(envp);
    close(out[1]);
    close(report[1]);
    if (pid < 0) {
        char why[MAX_ERROR];
        snprintf(why, sizeof why, "fork: %s", strerror(fork_errno));
        close(out[0]);
        close(report[0]);
        start_failed(id, limit, why);
        return;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    slots[index] = (struct slot){.active = 1, .id = id, .pid = pid, .fd = out[0], .report = report[0], .limit = limit};
}

/* ---- the worker's frames ---- */

static void protocol_error(const char *message) {
    send_error(0, message);
    kill_everything();
    _exit(2);
}

static void handle(int type, uint32_t id, const unsigned char *p, size_t len) {
    if (type == START) { start(id, p, len); return; }
    if (type != KILL) protocol_error("unknown frame type");
    if (len) protocol_error("kill: payload must be empty");
    struct slot *s = find(id);
    if (s && s->pid > 0) { /* an unknown id has ended already: nothing to kill */
        s->killed = 1;
        kill_tree(s->pid, tag_of((int)(s - slots)));
    }
}

static void read_frames(void) {
    ssize_t n;
    do n = read(0, inbuf + inlen, sizeof inbuf - inlen); while (n < 0 && errno == EINTR);
    if (n <= 0) { kill_everything(); _exit(0); } /* the worker closed its session */
    inlen += (size_t)n;
    size_t at = 0;
    while (inlen - at >= HEADER) {
        uint32_t body = get32(inbuf + at);
        if (body < BODY_MIN || body > MAX_BODY_IN) protocol_error("frame length out of bounds");
        if (inlen - at < HEADER + body) break;
        const unsigned char *f = inbuf + at + HEADER;
        handle(f[0], get32(f + 1), f + BODY_MIN, body - BODY_MIN);
        at += HEADER + body;
    }
    memmove(inbuf, inbuf + at, inlen - at);
    inlen -= at;
}

/* `--connect PATH`: the worker's socket becomes our stdin and stdout. */
static int connect_stdio(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) { fputs("taskenv-runner: socket path too long\n", stderr); return -1; }
    memcpy(addr.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("taskenv-runner: connect"); return -1; }
    if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0) { perror("taskenv-runner: dup2"); return -1; }
    close(fd);
    return 0;
}

int main(int argc, char **argv, char **envp) {
    if (argc == 3 && strcmp(argv[1], "--connect") == 0) {
        if (connect_stdio(argv[2]) < 0) return 1;
    } else if (argc != 1) {
        fputs("usage: taskenv-runner [--connect SOCKET]\n", stderr);
        return 2;
    }
    self = getpid();
    base_env = envp;
    char line[1024], *field[7];
    if (lookup("/etc/passwd", "0", line, sizeof line, field, 7) && *field[5])
        snprintf(root_home, sizeof root_home, "%s", field[5]);
    for (int i = 0; i < MAX_SLOTS; i++) slots[i].fd = slots[i].report = -1;
    /* Orphans of our commands come to us, not to the container's init: their tree stays ours. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) { perror("taskenv-runner: signalfd"); return 1; }
    unsigned char hello[6] = {0, VERSION};
    put32(hello + 2, MAX_ACTIVE);
    send_frame(HELLO, 0, hello, sizeof hello);

    static struct pollfd fds[MAX_SLOTS + 2];
    static int which[MAX_SLOTS + 2];
    for (;;) {
        int n = 0;
        fds[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        for (int i = 0; i < MAX_SLOTS; i++)
            if (slots[i].fd >= 0) { which[n] = i; fds[n++] = (struct pollfd){.fd = slots[i].fd, .events = POLLIN}; }
        if (poll(fds, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("taskenv-runner: poll");
            kill_everything();
            return 1;
        }
        /* Output first, then ends, then new frames: an exit frame follows all output read. */
        for (int i = 2; i < n; i++)
            if (fds[i].revents && slots[which[i]].fd == fds[i].fd) pump(&slots[which[i]], 0);
        if (fds[1].revents) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) == sizeof info) {}
            reap();
        }
        if (fds[0].revents) read_frames();
    }
}
