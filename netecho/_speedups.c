/*
 * netecho._speedups: netecho's hot loops in C, optional: without a C
 * compiler netecho installs without it and uses its pure-Python code, which
 * gives the same answers (the tests run both).
 *
 * - the stop-word scanner (netecho/stopword.py): feed(), inner_stop_line();
 * - the UDP echo (netecho/datagram.py): recv_datagrams() reads a batch with
 *   one recvmmsg(); echo_datagrams() does a whole batch (guards, sendmmsg(),
 *   counting); Window is netecho.limits.RateWindow;
 * - the stream echo (netecho/echo.py): echo_stream(), one read turn (recv,
 *   scan, send); EchoTable, the echoes netecho's reactor serves in C
 *   (netecho/reactor.py).
 *
 * inner_stop_line(data, word, start, end) -> int
 *
 *   data[start] is a line feed. Returns the index of the line feed that ends
 *   the first line after it whose text, trimmed of whitespace (what
 *   bytes.strip() trims), equals word; only line feeds before end count.
 *   -1 if there is none. memchr() finds the line feeds, so binary data with
 *   few of them costs a few nanoseconds per kilobyte.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <math.h>
#include <string.h>
#include <sys/socket.h>

static int blank(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n';
}

/*
 * The first line in [line, stop) that ends with a line feed before stop and
 * whose trimmed text is the word: the address of that line feed, or NULL.
 * *last is set to the last line feed passed (left alone if none).
 */
static const unsigned char *stop_line(const unsigned char *line, const unsigned char *stop,
                                      const unsigned char *w, Py_ssize_t wlen,
                                      const unsigned char **last) {
    while (line < stop) {
        const unsigned char *lf = memchr(line, '\n', (size_t)(stop - line));
        if (lf == NULL)
            break;
        const unsigned char *a = line, *b = lf;
        while (a < b && blank(*a)) a++;
        while (b > a && blank(b[-1])) b--;
        if (b - a == wlen && memcmp(a, w, (size_t)wlen) == 0)
            return lf;
        *last = lf;
        line = lf + 1;
    }
    return NULL;
}

static PyObject *inner_stop_line(PyObject *self, PyObject *args) {
    Py_buffer data, word;
    Py_ssize_t start, end, found = -1;
    if (!PyArg_ParseTuple(args, "y*y*nn", &data, &word, &start, &end))
        return NULL;
    if (start < 0) start = 0;
    if (end > data.len) end = data.len;
    const unsigned char *buf = data.buf, *last = NULL;
    if (word.len > 0 && start < end) {
        const unsigned char *lf = stop_line(buf + start + 1, buf + end, word.buf, word.len, &last);
        if (lf != NULL)
            found = lf - buf;
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&word);
    return PyLong_FromSsize_t(found);
}

/*
 * What stopword._candidate() returns for the unfinished line text[0:n]:
 * NULL for None, else a new reference (the word itself, or a prefix of it).
 */
static PyObject *candidate(const unsigned char *text, Py_ssize_t n, PyObject *word_obj,
                           const unsigned char *w, Py_ssize_t wlen) {
    const unsigned char *a = text, *b = text + n;
    while (a < b && blank(*a)) a++;
    if (b - a <= wlen && memcmp(a, w, (size_t)(b - a)) == 0)
        return PyBytes_FromStringAndSize((const char *)a, b - a);
    while (b > a && blank(b[-1])) b--;
    if (b - a == wlen && memcmp(a, w, (size_t)wlen) == 0) {
        Py_INCREF(word_obj);
        return word_obj;
    }
    return NULL;
}

/*
 * feed(data, word, pending) -> (end, pending): StopWordScanner.feed() for a
 * scanner whose pending text is None or empty (the common case), with the
 * same results; (-2, pending) when pending is a non-empty prefix of the
 * word, which the Python code handles.
 */
/*
 * StopWordScanner.feed() on buf[0:n] for a pending text that is None or
 * b"": sets *end (-1: no stop line) and *new_pending (a new reference, or
 * NULL for None). Returns 0, 1 if pending is a non-empty prefix of the word
 * (left to the Python code), or -1 with an exception set.
 */
static int scan_chunk(const unsigned char *buf, Py_ssize_t n, PyObject *word_obj, PyObject *pending,
                      Py_ssize_t *end, PyObject **new_pending) {
    const unsigned char *w = (const unsigned char *)PyBytes_AS_STRING(word_obj);
    Py_ssize_t wlen = PyBytes_GET_SIZE(word_obj);
    int at_line_start = pending != Py_None; /* pending == b"" */
    *end = -1;
    *new_pending = NULL;
    if (at_line_start && (!PyBytes_Check(pending) || PyBytes_GET_SIZE(pending) != 0))
        return 1;
    const unsigned char *first = memchr(buf, '\n', (size_t)n);
    if (first == NULL) {
        if (at_line_start)
            *new_pending = candidate(buf, n, word_obj, w, wlen);
        return PyErr_Occurred() ? -1 : 0;
    }
    /* The unfinished line from the last chunk (if it began at a line
     * start, pending is b""), then the lines inside this chunk. */
    const unsigned char *last = first, *stop = buf + n;
    const unsigned char *lf = stop_line(at_line_start ? buf : first + 1, stop, w, wlen, &last);
    if (lf != NULL) {
        *end = lf - buf + 1;
        Py_INCREF(pending);
        *new_pending = pending;
        return 0;
    }
    *new_pending = candidate(last + 1, stop - (last + 1), word_obj, w, wlen);
    return PyErr_Occurred() ? -1 : 0;
}

/*
 * feed(data, word, pending) -> (end, pending): StopWordScanner.feed() for a
 * scanner whose pending text is None or empty (the common case), with the
 * same results; (-2, pending) when pending is a non-empty prefix of the
 * word, which the Python code handles.
 */
static PyObject *feed(PyObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *word_obj, *pending, *new_pending, *result;
    Py_ssize_t end;
    if (!PyArg_ParseTuple(args, "y*SO", &data, &word_obj, &pending))
        return NULL;
    int r = scan_chunk(data.buf, data.len, word_obj, pending, &end, &new_pending);
    PyBuffer_Release(&data);
    if (r < 0)
        return NULL;
    if (r == 1)
        return Py_BuildValue("nO", (Py_ssize_t)-2, pending);
    result = Py_BuildValue("nO", end, new_pending ? new_pending : Py_None);
    Py_XDECREF(new_pending);
    return result;
}

/*
 * echo_stream(fd, word, pending) -> None or (kind, n, pending, data): one
 * read turn of a stream echo whose transport has nothing buffered: recv()
 * up to 64 KiB from the non-blocking socket fd, look for the stop word
 * (word: bytes, or None for no stop word; pending: the scanner's pending
 * text) and send the bytes straight back, all without making them a Python
 * object. None: nothing to read. kind 0: n bytes read and all sent; 1: n read,
 * data is what send() did not take (it goes to transport.write(), which also
 * reports a send error); 2: n read and nothing sent, data is the chunk, for
 * the Python code (a stop line in it, or a piece of the word pending);
 * 3: end of file. pending: the scanner's new pending text (unchanged for 2).
 * OSError for a failed recv().
 */
static unsigned char stream_buf[65536];

/* One read turn (what echo_stream() and the EchoTable share). */
typedef struct {
    int kind;          /* -1: nothing to read; 0-4 as echo_stream()'s kinds, 4: recv() failed */
    Py_ssize_t n;      /* bytes read */
    Py_ssize_t sent;   /* of them, bytes sent (kinds 0 and 1) */
    int err;           /* errno (kind 4) */
    PyObject *pending; /* kinds 0 and 1: the new pending text (a new reference) */
} Turn;

/* Non-blocking calls: the GIL stays held (and guards stream_buf). 0, or -1
 * with an exception set (the scan's, out of memory). */
static int stream_turn(int fd, PyObject *word, PyObject *pending, Turn *t) {
    Py_ssize_t end = -1;
    t->pending = NULL;
    t->sent = 0;
    t->n = recv(fd, stream_buf, sizeof stream_buf, 0);
    if (t->n < 0) {
        t->err = errno;
        t->kind = t->err == EAGAIN || t->err == EWOULDBLOCK || t->err == EINTR ? -1 : 4;
        t->n = 0;
        return 0;
    }
    if (t->n == 0) {
        t->kind = 3;
        return 0;
    }
    if (word != Py_None) {
        PyObject *new_pending;
        int r = scan_chunk(stream_buf, t->n, word, pending, &end, &new_pending);
        if (r < 0)
            return -1;
        if (r == 1 || end >= 0) {
            Py_XDECREF(new_pending);
            t->kind = 2;
            return 0;
        }
        t->pending = new_pending ? new_pending : Py_NewRef(Py_None);
    } else
        t->pending = Py_NewRef(pending);
    ssize_t sent = send(fd, stream_buf, (size_t)t->n, MSG_NOSIGNAL);
    t->sent = sent < 0 ? 0 : sent; /* EAGAIN, or an error transport.write() will find and report */
    t->kind = t->sent == t->n ? 0 : 1;
    return 0;
}

/* A finished turn t (kinds 0-4) as (kind, n, pending, data), or with
 * unsynced as a fifth item when five is set; old: the pending text before
 * the turn. Takes t->pending. */
static PyObject *turn_tuple(Turn *t, PyObject *old, int five, Py_ssize_t unsynced) {
    PyObject *data;
    if (t->kind == 1)
        data = PyBytes_FromStringAndSize((const char *)stream_buf + t->sent, t->n - t->sent);
    else if (t->kind == 2)
        data = PyBytes_FromStringAndSize((const char *)stream_buf, t->n);
    else
        data = Py_NewRef(Py_None);
    PyObject *pending = t->pending ? t->pending : Py_NewRef(old);
    t->pending = NULL;
    if (data == NULL) {
        Py_DECREF(pending);
        return NULL;
    }
    Py_ssize_t n = t->kind == 4 ? (Py_ssize_t)t->err : t->n;
    return five ? Py_BuildValue("inNNn", t->kind, n, pending, data, unsynced)
                : Py_BuildValue("inNN", t->kind, n, pending, data);
}

static PyObject *echo_stream(PyObject *self, PyObject *args) {
    int fd;
    PyObject *word_obj, *pending;
    Turn t;
    if (!PyArg_ParseTuple(args, "iOO", &fd, &word_obj, &pending))
        return NULL;
    if (word_obj != Py_None && !PyBytes_Check(word_obj)) {
        PyErr_SetString(PyExc_TypeError, "echo_stream: word must be bytes or None");
        return NULL;
    }
    if (stream_turn(fd, word_obj, pending, &t) < 0)
        return NULL;
    if (t.kind == -1)
        Py_RETURN_NONE;
    if (t.kind == 4) {
        errno = t.err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return turn_tuple(&t, pending, 0, 0);
}

/*
 * recv_datagrams(fd, count) -> list of (data, (host, port)): up to count
 * (at most BATCH) IPv4 datagrams waiting on the non-blocking socket fd, read
 * with one recvmmsg(); [] when none is waiting; OSError otherwise (as
 * socket.recvfrom() raises it). Each datagram is whole (buffers of 64 KiB).
 */
#define BATCH 16
#define DGRAM_MAX 65536
static unsigned char *dgram_bufs;

static struct sockaddr_in dgram_from[BATCH];
static unsigned dgram_len[BATCH];

/* recvmmsg() of up to count datagrams into dgram_bufs/dgram_from/dgram_len:
 * how many, or -1 with errno set. MSG_DONTWAIT: it never blocks, so
 * callers keep the GIL, which guards these buffers. */
static int read_batch(int fd, int count) {
    if (count < 1) count = 1;
    if (count > BATCH) count = BATCH;
    if (dgram_bufs == NULL && (dgram_bufs = PyMem_RawMalloc((size_t)BATCH * DGRAM_MAX)) == NULL) {
        errno = ENOMEM;
        return -1;
    }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = dgram_bufs + (size_t)i * DGRAM_MAX;
        iov[i].iov_len = DGRAM_MAX;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &dgram_from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof dgram_from[i];
    }
    int got = recvmmsg(fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    for (int i = 0; i < got; i++) {
        dgram_len[i] = msgs[i].msg_len;
        if (dgram_from[i].sin_family != AF_INET) {
            errno = EAFNOSUPPORT;
            return -1;
        }
    }
    return got;
}

/* The last SOURCES sources seen: their (host, port) tuple and their
 * network string (what netecho.limits.source_prefix() gives), made once. */
#define SOURCES 64
typedef struct {
    struct sockaddr_in from;
    PyObject *addr, *network;
} Source;
static Source sources[SOURCES];
static int sources_next;

static Source *source_of(const struct sockaddr_in *from) {
    for (int j = 0; j < SOURCES; j++)
        if (sources[j].addr != NULL && sources[j].from.sin_port == from->sin_port &&
            sources[j].from.sin_addr.s_addr == from->sin_addr.s_addr)
            return &sources[j];
    char host[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &from->sin_addr, host, sizeof host) == NULL)
        return (Source *)PyErr_SetFromErrno(PyExc_OSError);
    uint32_t ip = ntohl(from->sin_addr.s_addr);
    PyObject *addr = Py_BuildValue("(si)", host, (int)ntohs(from->sin_port));
    PyObject *network = PyUnicode_FromFormat("%u.%u.%u", (ip >> 24) & 255, (ip >> 16) & 255, (ip >> 8) & 255);
    if (addr == NULL || network == NULL) {
        Py_XDECREF(addr);
        Py_XDECREF(network);
        return NULL;
    }
    Source *src = &sources[sources_next];
    sources_next = (sources_next + 1) % SOURCES;
    Py_XSETREF(src->addr, addr);
    Py_XSETREF(src->network, network);
    src->from = *from;
    return src;
}

static PyObject *recv_datagrams(PyObject *self, PyObject *args) {
    int fd, count;
    if (!PyArg_ParseTuple(args, "ii", &fd, &count))
        return NULL;
    int got = read_batch(fd, count);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyList_New(0);
        if (errno == EAFNOSUPPORT) {
            PyErr_SetString(PyExc_ValueError, "recv_datagrams: not an IPv4 socket");
            return NULL;
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *list = PyList_New(got);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
        Source *src = source_of(&dgram_from[i]);
        PyObject *item = src == NULL ? NULL
                         : Py_BuildValue("(y#O)", (const char *)dgram_bufs + (size_t)i * DGRAM_MAX,
                                         (Py_ssize_t)dgram_len[i], src->addr);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

/*
 * Window: netecho.limits.RateWindow in C (the same behaviour; the tests run
 * both): at most `limit` events a second per key, in one-second windows, at
 * most `size` keys a window (the others share one count).
 */
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    double limit;
    Py_ssize_t size;
    PyObject *clock;
    double start;
    PyObject *counts; /* dict: key -> int */
    int monotonic;    /* clock is time.monotonic: read CLOCK_MONOTONIC directly */
} Window;

static PyObject *overflow_key; /* the key beyond-size keys share */
static PyObject *time_monotonic;

static double monotonic(void);

static int window_init(Window *w, PyObject *args, PyObject *kw) {
    static char *names[] = {"rate", "size", "clock", NULL};
    double limit;
    Py_ssize_t size = 4096;
    PyObject *clock = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "d|nO", names, &limit, &size, &clock))
        return -1;
    if (clock == NULL)
        clock = time_monotonic;
    Py_INCREF(clock);
    Py_XSETREF(w->clock, clock);
    if (w->counts == NULL && (w->counts = PyDict_New()) == NULL)
        return -1;
    PyDict_Clear(w->counts);
    w->limit = limit;
    w->size = size;
    w->start = -INFINITY;
    w->monotonic = clock == time_monotonic;
    return 0;
}

static void window_dealloc(Window *w) {
    PyObject_GC_UnTrack(w);
    Py_CLEAR(w->clock);
    Py_CLEAR(w->counts);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static int window_traverse(Window *w, visitproc visit, void *arg) {
    Py_VISIT(w->clock);
    Py_VISIT(w->counts);
    return 0;
}

static int window_now(Window *w, double *now) {
    if (w->clock == NULL) {
        PyErr_SetString(PyExc_ValueError, "Window: __init__ was not called");
        return -1;
    }
    if (w->monotonic) {
        *now = monotonic();
        return 0;
    }
    PyObject *t = PyObject_CallNoArgs(w->clock);
    if (t == NULL)
        return -1;
    *now = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return *now == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* RateWindow.allow(key, now): 1, 0, or -1 with an exception set. */
static int window_allow(Window *w, PyObject *key, double now) {
    PyObject *counts = w->counts;
    if (counts == NULL) {
        PyErr_SetString(PyExc_ValueError, "Window: __init__ was not called");
        return -1;
    }
    if (now - w->start >= 1.0) {
        PyDict_Clear(counts);
        w->start = now;
    }
    PyObject *count = PyDict_GetItemWithError(counts, key);
    long n;
    if (count == NULL) {
        if (PyErr_Occurred())
            return -1;
        if (PyDict_GET_SIZE(counts) >= w->size) {
            key = overflow_key;
            count = PyDict_GetItemWithError(counts, key);
            if (count == NULL && PyErr_Occurred())
                return -1;
        }
    }
    n = count == NULL ? 0 : PyLong_AsLong(count);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if ((double)n >= w->limit)
        return 0;
    PyObject *next = PyLong_FromLong(n + 1);
    if (next == NULL)
        return -1;
    int r = PyDict_SetItem(counts, key, next);
    Py_DECREF(next);
    return r < 0 ? -1 : 1;
}

static PyObject *window_allow_py(Window *w, PyObject *args, PyObject *kw) {
    static char *names[] = {"key", "now", NULL};
    PyObject *key, *now_obj = Py_None;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", names, &key, &now_obj))
        return NULL;
    if (now_obj == Py_None) {
        if (window_now(w, &now) < 0)
            return NULL;
    } else if ((now = PyFloat_AsDouble(now_obj)) == -1.0 && PyErr_Occurred())
        return NULL;
    int r = window_allow(w, key, now);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyMethodDef window_methods[] = {
    {"allow", (PyCFunction)(void (*)(void))window_allow_py, METH_VARARGS | METH_KEYWORDS,
     "allow(key, now=None) -> bool: count one event for key; False if its window is full"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef window_members[] = {
    {"limit", T_DOUBLE, offsetof(Window, limit), READONLY, "events a second per key"},
    {"size", T_PYSSIZET, offsetof(Window, size), READONLY, "keys counted a window"},
    {"clock", T_OBJECT, offsetof(Window, clock), READONLY, "the clock (seconds)"},
    {"_counts", T_OBJECT, offsetof(Window, counts), READONLY, "this window's counts"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netecho._speedups.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Window(rate, size=4096, clock=time.monotonic): netecho.limits.RateWindow in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)window_init,
    .tp_dealloc = (destructor)window_dealloc,
    .tp_traverse = (traverseproc)window_traverse,
    .tp_methods = window_methods,
    .tp_members = window_members,
};

/*
 * echo_datagrams(fd, count, guards) -> (got, used, echoed, nbytes, later):
 * one batch of DatagramEcho's read loop in C, for an IPv4 socket: up to
 * count datagrams by recvmmsg(), each through the guards of
 * DatagramEcho._admit() (same order, same counting), the admitted ones
 * echoed by one sendmmsg() from the buffers they were read into.
 *
 * guards: (own_ports, own_host, own_port, rate, global_rate, word, peers,
 * max_peers): the set of netecho's ports; this socket's address (own_host
 * as a string, "" for none); the two Windows (or None); the stop word (bytes,
 * or None when nobody listens for it); the set of peers echoed to and its
 * bound (Stats).
 *
 * got: datagrams read; used: what they count against maxThroughput (their
 * sizes, 1 for an empty one); echoed, nbytes: the echoes sent; later: what
 * the Python code does after the batch, as (what, detail, addr) with what
 * "refuse" (detail: the reason), "send_error" (detail: errno) or "stop" (an
 * echoed datagram was the stop word). OSError when recvmmsg() fails.
 */
static int add_later(PyObject *later, const char *what, PyObject *detail, PyObject *addr) {
    PyObject *item = Py_BuildValue("(sNO)", what, detail, addr);
    if (item == NULL)
        return -1;
    int r = PyList_Append(later, item);
    Py_DECREF(item);
    return r;
}

static PyObject *echo_datagrams(PyObject *self, PyObject *args) {
    int fd, count, own_port;
    PyObject *own_ports, *own_host_obj, *rate_obj, *global_obj, *word, *peers;
    Py_ssize_t max_peers;
    if (!PyArg_ParseTuple(args, "ii(O!UiOOOO!n)", &fd, &count, &PySet_Type, &own_ports, &own_host_obj,
                          &own_port, &rate_obj, &global_obj, &word, &PySet_Type, &peers, &max_peers))
        return NULL;
    if ((rate_obj != Py_None && !PyObject_TypeCheck(rate_obj, &WindowType)) ||
        (global_obj != Py_None && !PyObject_TypeCheck(global_obj, &WindowType)) ||
        (word != Py_None && !PyBytes_Check(word))) {
        PyErr_SetString(PyExc_TypeError, "echo_datagrams: windows must be Windows, word bytes or None");
        return NULL;
    }
    Window *rate = rate_obj == Py_None ? NULL : (Window *)rate_obj;
    Window *global = global_obj == Py_None ? NULL : (Window *)global_obj;
    struct in_addr own_host = {0};
    const char *own_host_str = PyUnicode_AsUTF8(own_host_obj);
    if (own_host_str == NULL)
        return NULL;
    int has_own_host = inet_pton(AF_INET, own_host_str, &own_host) == 1;
    int got = read_batch(fd, count);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return Py_BuildValue("(iiinN)", 0, 0, 0, (Py_ssize_t)0, PyList_New(0));
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *later = PyList_New(0);
    if (later == NULL)
        return NULL;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    PyObject *sent_to[BATCH]; /* new references: the cache may reuse a slot within a batch */
    int admitted = 0, used = 0;
    double now = 0;
    int have_now = 0;
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < got; i++) {
        const struct sockaddr_in *from = &dgram_from[i];
        used += dgram_len[i] ? (int)dgram_len[i] : 1;
        Source *src = source_of(from);
        if (src == NULL)
            goto fail;
        int port = ntohs(from->sin_port);
        uint32_t ip = ntohl(from->sin_addr.s_addr);
        const char *why = NULL;
        if (port < 1024)
            why = "udp_privileged_source_port";
        else {
            PyObject *p = PyLong_FromLong(port);
            int mine = p == NULL ? -1 : PySet_Contains(own_ports, p);
            Py_XDECREF(p);
            if (mine < 0)
                goto fail;
            if (mine)
                why = "udp_own_service_port";
            else if ((ip >> 28) == 14 || ip == 0xffffffffu) /* 224.0.0.0/4, 255.255.255.255 */
                why = "udp_group_source";
            else if (port == own_port && has_own_host && from->sin_addr.s_addr == own_host.s_addr)
                why = "udp_own_address";
            else if (rate != NULL || global != NULL) {
                /* As _admit(): one clock read for both windows when the
                 * per-network one is there (they share a clock). */
                if (rate != NULL) {
                    if (!have_now) {
                        if (window_now(rate, &now) < 0)
                            goto fail;
                        have_now = 1;
                    }
                    int ok = window_allow(rate, src->network, now);
                    if (ok < 0)
                        goto fail;
                    if (!ok)
                        why = "udp_rate_limited";
                }
                if (why == NULL && global != NULL) {
                    double when = now;
                    if (rate == NULL && window_now(global, &when) < 0)
                        goto fail;
                    int ok = window_allow(global, Py_None, when);
                    if (ok < 0)
                        goto fail;
                    if (!ok)
                        why = "udp_global_rate_limited";
                }
            }
        }
        if (why != NULL) {
            if (add_later(later, "refuse", PyUnicode_FromString(why), src->addr) < 0)
                goto fail;
            continue;
        }
        iov[admitted].iov_base = dgram_bufs + (size_t)i * DGRAM_MAX;
        iov[admitted].iov_len = dgram_len[i];
        msgs[admitted].msg_hdr.msg_iov = &iov[admitted];
        msgs[admitted].msg_hdr.msg_iovlen = 1;
        msgs[admitted].msg_hdr.msg_name = &dgram_from[i];
        msgs[admitted].msg_hdr.msg_namelen = sizeof dgram_from[i];
        Py_INCREF(src->addr);
        sent_to[admitted] = src->addr;
        admitted++;
    }
    int echoed = 0;
    Py_ssize_t nbytes = 0;
    for (int k = 0; k < admitted;) {
        int sent = sendmmsg(fd, msgs + k, (unsigned)(admitted - k), MSG_DONTWAIT | MSG_NOSIGNAL);
        int upto = sent > 0 ? k + sent : k;
        for (; k < upto; k++) {
            echoed++;
            nbytes += (Py_ssize_t)iov[k].iov_len;
            if (PySet_GET_SIZE(peers) < max_peers && PySet_Add(peers, sent_to[k]) < 0)
                goto fail;
            if (word != Py_None) {
                const unsigned char *a = iov[k].iov_base, *b = a + iov[k].iov_len;
                while (a < b && blank(*a)) a++;
                while (b > a && blank(b[-1])) b--;
                if (b - a == PyBytes_GET_SIZE(word) && memcmp(a, PyBytes_AS_STRING(word), (size_t)(b - a)) == 0 &&
                    add_later(later, "stop", Py_NewRef(Py_None), sent_to[k]) < 0)
                    goto fail;
            }
        }
        if (sent <= 0) {
            /* msgs[k] failed (sendmmsg() reports the first failure): note it, go on. */
            int err = sent < 0 ? errno : EIO;
            if (err == EINTR)
                continue;
            if (add_later(later, "send_error", PyLong_FromLong(err), sent_to[k]) < 0)
                goto fail;
            k++;
        }
    }
    for (int k = 0; k < admitted; k++)
        Py_DECREF(sent_to[k]);
    return Py_BuildValue("(iiinN)", got, used, echoed, nbytes, later);
fail:
    for (int k = 0; k < admitted; k++)
        Py_DECREF(sent_to[k]);
    Py_DECREF(later);
    return NULL;
}

/*
 * EchoTable: the stream echoes netecho's reactor (netecho/reactor.py) serves
 * without returning to Python, by descriptor. Each entry is one Echo
 * session (netecho/echo.py) whose transport is plain, registered for reading
 * and has nothing buffered; the session adds itself and the reactor removes
 * it when the descriptor stops being read (which Twisted does before it
 * closes one), so an entry never outlives its connection.
 *
 * poll(epfd, maxevents, timeout) -> (events, turns) waits on the reactor's
 * epoll descriptor like select.epoll.poll() (timeout in seconds, negative:
 * without end) and serves every plain EPOLLIN event of a table descriptor
 * in C: one echo_stream() turn, counted in the entry. It waits again, within
 * the timeout, until an event the Python code must see arrives: events is a
 * list of (fd, eventmask) for the reactor to dispatch as usual; turns a list
 * of (fd, session, (kind, n, pending, data, unsynced)) for the turns C could
 * not finish (echo_stream()'s kinds 1, 2 and 3; 4: recv() failed, n is
 * errno), whose entry it removed first. unsynced: bytes echoed in C and not
 * yet counted by the session. Returns at once when the timeout passes, on a
 * signal (after its handler ran), and after at most POLL_ROUNDS waits.
 */
#include <sys/epoll.h>
#include <time.h>
#include <math.h>

#define POLL_EVENTS 1024
#define POLL_ROUNDS 64

typedef struct {
    PyObject *session; /* NULL: no entry */
    PyObject *word;    /* bytes, or None */
    PyObject *pending; /* the scanner's pending text */
    Py_ssize_t unsynced;
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *entries;
    Py_ssize_t size, count;
} EchoTable;

static void entry_clear(Entry *e) {
    Py_CLEAR(e->session);
    Py_CLEAR(e->word);
    Py_CLEAR(e->pending);
    e->unsynced = 0;
}

static Entry *table_entry(EchoTable *t, int fd) {
    if (fd < 0 || fd >= t->size || t->entries[fd].session == NULL)
        return NULL;
    return &t->entries[fd];
}

static void table_dealloc(EchoTable *t) {
    PyObject_GC_UnTrack(t);
    for (Py_ssize_t i = 0; i < t->size; i++)
        entry_clear(&t->entries[i]);
    PyMem_Free(t->entries);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int table_traverse(EchoTable *t, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < t->size; i++) {
        Py_VISIT(t->entries[i].session);
        Py_VISIT(t->entries[i].pending);
    }
    return 0;
}

static int table_clear(EchoTable *t) {
    for (Py_ssize_t i = 0; i < t->size; i++)
        entry_clear(&t->entries[i]);
    t->count = 0;
    return 0;
}

static Py_ssize_t table_len(EchoTable *t) { return t->count; }

/* add(fd, session, word, pending): session's echoes on fd are served in C. */
static PyObject *table_add(EchoTable *t, PyObject *args) {
    int fd;
    PyObject *session, *word, *pending;
    if (!PyArg_ParseTuple(args, "iOOO", &fd, &session, &word, &pending))
        return NULL;
    if (fd < 0 || (word != Py_None && !PyBytes_Check(word)) ||
        (pending != Py_None && !PyBytes_Check(pending))) {
        PyErr_SetString(PyExc_ValueError, "EchoTable.add: bad descriptor, word or pending text");
        return NULL;
    }
    if (fd >= t->size) {
        Py_ssize_t size = t->size ? t->size : 64;
        while (size <= fd) size *= 2;
        Entry *entries = PyMem_Realloc(t->entries, (size_t)size * sizeof(Entry));
        if (entries == NULL)
            return PyErr_NoMemory();
        memset(entries + t->size, 0, (size_t)(size - t->size) * sizeof(Entry));
        t->entries = entries;
        t->size = size;
    }
    Entry *e = &t->entries[fd];
    if (e->session == NULL)
        t->count++;
    entry_clear(e);
    Py_INCREF(session);
    Py_INCREF(word);
    Py_INCREF(pending);
    e->session = session;
    e->word = word;
    e->pending = pending;
    Py_RETURN_NONE;
}

/* remove(fd) -> None, or (session, unsynced, pending) of the removed entry. */
static PyObject *table_remove(EchoTable *t, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    Entry *e = table_entry(t, fd);
    if (e == NULL)
        Py_RETURN_NONE;
    PyObject *result = Py_BuildValue("OnO", e->session, e->unsynced, e->pending);
    if (result != NULL) {
        entry_clear(e);
        t->count--;
    }
    return result;
}

/* take(fd) -> the bytes echoed on fd in C since the last take (0: no entry). */
static PyObject *table_take(EchoTable *t, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    Entry *e = table_entry(t, fd);
    Py_ssize_t n = 0;
    if (e != NULL) {
        n = e->unsynced;
        e->unsynced = 0;
    }
    return PyLong_FromSsize_t(n);
}

/* flush() -> [(session, unsynced), ...] for every entry that has echoed
 * bytes since its last take or flush (their counts start again at 0). */
static PyObject *table_flush(EchoTable *t, PyObject *unused) {
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < t->size; i++) {
        Entry *e = &t->entries[i];
        if (e->session == NULL || e->unsynced == 0)
            continue;
        PyObject *item = Py_BuildValue("On", e->session, e->unsynced);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
        e->unsynced = 0;
    }
    return list;
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL)
        return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

/*
 * One turn of the entry at fd (see echo_stream()). Returns 0 when it is
 * finished in C (or there was nothing to read), 1 when a turn for Python
 * was appended to turns (and the entry removed), -1 on an exception.
 */
static int table_turn(EchoTable *t, int fd, Entry *e, PyObject *turns) {
    Turn turn;
    if (stream_turn(fd, e->word, e->pending, &turn) < 0)
        return -1;
    if (turn.kind == -1)
        return 0;
    if (turn.kind == 0) {
        e->unsynced += turn.n;
        Py_SETREF(e->pending, turn.pending);
        return 0;
    }
    PyObject *value = turn_tuple(&turn, e->pending, 1, e->unsynced);
    if (value == NULL)
        return -1;
    if (append_new(turns, Py_BuildValue("iON", fd, e->session, value)) < 0)
        return -1;
    entry_clear(e);
    t->count--;
    return 1;
}

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static PyObject *table_poll(EchoTable *t, PyObject *args) {
    int epfd, maxevents;
    double timeout;
    struct epoll_event poll_events[POLL_EVENTS]; /* on the stack: the wait runs without the GIL */
    if (!PyArg_ParseTuple(args, "iid", &epfd, &maxevents, &timeout))
        return NULL;
    if (maxevents < 1) maxevents = 1;
    if (maxevents > POLL_EVENTS) maxevents = POLL_EVENTS;
    double deadline = timeout >= 0 ? monotonic() + timeout : -1;
    PyObject *events = PyList_New(0), *turns = PyList_New(0);
    if (events == NULL || turns == NULL)
        goto fail;
    for (int round = 0; round < POLL_ROUNDS; round++) {
        int wait_ms = -1;
        if (deadline >= 0) {
            double left = deadline - monotonic();
            wait_ms = left > 0 ? (int)ceil(left * 1000) : 0;
        }
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = epoll_wait(epfd, poll_events, maxevents, wait_ms);
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (errno != EINTR) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            if (PyErr_CheckSignals() < 0)
                goto fail;
            break;
        }
        for (int i = 0; i < got; i++) {
            int fd = poll_events[i].data.fd;
            uint32_t ev = poll_events[i].events;
            Entry *e = ev == EPOLLIN ? table_entry(t, fd) : NULL;
            if (e != NULL) {
                if (table_turn(t, fd, e, turns) < 0)
                    goto fail;
            } else if (append_new(events, Py_BuildValue("iI", fd, (unsigned)ev)) < 0)
                goto fail;
        }
        if (got == 0 || wait_ms == 0 || PyList_GET_SIZE(events) || PyList_GET_SIZE(turns))
            break;
        if (PyErr_CheckSignals() < 0)
            goto fail;
    }
    return Py_BuildValue("NN", events, turns);
fail:
    Py_XDECREF(events);
    Py_XDECREF(turns);
    return NULL;
}

static PyMethodDef table_methods[] = {
    {"add", (PyCFunction)table_add, METH_VARARGS, "add(fd, session, word, pending)"},
    {"remove", (PyCFunction)table_remove, METH_VARARGS, "remove(fd) -> None or (session, unsynced, pending)"},
    {"take", (PyCFunction)table_take, METH_VARARGS, "take(fd) -> bytes echoed in C since the last take"},
    {"flush", (PyCFunction)table_flush, METH_NOARGS, "flush() -> [(session, unsynced), ...]"},
    {"poll", (PyCFunction)table_poll, METH_VARARGS, "poll(epfd, maxevents, timeout) -> (events, turns)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods table_as_sequence = {.sq_length = (lenfunc)table_len};

static PyTypeObject EchoTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netecho._speedups.EchoTable",
    .tp_basicsize = sizeof(EchoTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The stream echoes a reactor serves in C (see netecho/_speedups.c).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_traverse = (traverseproc)table_traverse,
    .tp_clear = (inquiry)table_clear,
    .tp_methods = table_methods,
    .tp_as_sequence = &table_as_sequence,
};

static PyMethodDef methods[] = {
    {"echo_stream", echo_stream, METH_VARARGS,
     "echo_stream(fd, word, pending): one read turn of a stream echo (see netecho/_speedups.c)"},
    {"recv_datagrams", recv_datagrams, METH_VARARGS,
     "recv_datagrams(fd, count) -> [(data, (host, port)), ...]: up to count IPv4 datagrams by one recvmmsg()"},
    {"echo_datagrams", echo_datagrams, METH_VARARGS,
     "echo_datagrams(fd, count, guards) -> (got, used, echoed, nbytes, later): a batch of the UDP echo in C"},
    {"feed", feed, METH_VARARGS,
     "feed(data, word, pending) -> (end, pending): StopWordScanner.feed for a None or empty pending; (-2, pending) otherwise"},
    {"inner_stop_line", inner_stop_line, METH_VARARGS,
     "inner_stop_line(data, word, start, end): index of the LF ending the first stop line after data[start], or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "netecho._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&EchoTableType) < 0 || PyType_Ready(&WindowType) < 0)
        return NULL;
    if (overflow_key == NULL && (overflow_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type)) == NULL)
        return NULL;
    if (time_monotonic == NULL) {
        PyObject *time = PyImport_ImportModule("time");
        if (time == NULL)
            return NULL;
        time_monotonic = PyObject_GetAttrString(time, "monotonic");
        Py_DECREF(time);
        if (time_monotonic == NULL)
            return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EchoTableType);
    if (PyModule_AddObject(m, "EchoTable", (PyObject *)&EchoTableType) < 0) {
        Py_DECREF(&EchoTableType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&WindowType);
    if (PyModule_AddObject(m, "Window", (PyObject *)&WindowType) < 0) {
        Py_DECREF(&WindowType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
