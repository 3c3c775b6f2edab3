/*
 * netecho._speedups: optional C; without a C compiler netecho installs
 * without it and uses its pure-Python twins, which give the same answers
 * (the tests compare them). Only a pure scan and protocol-agnostic I/O live
 * here, never a rule of netecho's:
 *
 * - Scanner: the stop-word scan (netecho/stopword.py's StopWordScanner in
 *   C; memchr() finds the line feeds, so binary data with few of them costs
 *   a few nanoseconds per kilobyte);
 * - recv_datagrams() and send_datagrams(): batches of datagrams by one
 *   recvmmsg() / sendmmsg(), for the UDP port (netecho/transports.py),
 *   IPv4 and IPv6 alike;
 * - poll_dispatch(): one wait of netecho's epoll reactor (netecho/reactor.py),
 *   dispatching read events without a Python loop.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
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
 * The scan of buf[0:n] for a pending text that is None or b"": sets *end (-1: no stop line) and *new_pending (a new reference, or
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
 * Scanner(word): netecho.stopword.StopWordScanner in C (the same state and
 * results; tests/test_stopword.py runs both against a slow reference):
 * feed(data) -> int, pending (None, or the unfinished line's text as far
 * as it can still become the word). One C call a chunk, no tuple, no
 * Python frame: the scan runs on every chunk of every stream.
 */
typedef struct {
    PyObject_HEAD
    PyObject *word;    /* bytes */
    PyObject *pending; /* None or bytes */
} Scanner;

static PyObject *empty_bytes;

/* Whether (p + line[0:llen]).strip() == word, p being a non-empty,
 * non-blank-led pending text: no concatenation is made. */
static int joined_is_word(const unsigned char *p, Py_ssize_t plen, const unsigned char *line, Py_ssize_t llen,
                          const unsigned char *w, Py_ssize_t wlen) {
    while (llen > 0 && blank(line[llen - 1])) llen--;
    if (llen == 0) {
        while (plen > 0 && blank(p[plen - 1])) plen--;
        return plen == wlen && memcmp(p, w, (size_t)wlen) == 0;
    }
    return plen + llen == wlen && memcmp(p, w, (size_t)plen) == 0 &&
           memcmp(line, w + plen, (size_t)llen) == 0;
}

/* stopword._candidate(p + data[0:n]) for such a p and data without a line
 * feed: a new reference, or NULL (None; check PyErr_Occurred()). */
static PyObject *joined_candidate(PyObject *pending, const unsigned char *data, Py_ssize_t n,
                                  PyObject *word_obj, const unsigned char *w, Py_ssize_t wlen) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(pending);
    Py_ssize_t plen = PyBytes_GET_SIZE(pending);
    if (plen + n <= wlen && memcmp(p, w, (size_t)plen) == 0 && memcmp(data, w + plen, (size_t)n) == 0) {
        PyObject *text = PyBytes_FromStringAndSize(NULL, plen + n);
        if (text != NULL) {
            memcpy(PyBytes_AS_STRING(text), p, (size_t)plen);
            memcpy(PyBytes_AS_STRING(text) + plen, data, (size_t)n);
        }
        return text;
    }
    if (joined_is_word(p, plen, data, n, w, wlen)) {
        Py_INCREF(word_obj);
        return word_obj;
    }
    return NULL;
}

static int scanner_init(Scanner *self, PyObject *args, PyObject *kw) {
    PyObject *word;
    static char *names[] = {"word", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "S", names, &word))
        return -1;
    Py_ssize_t n = PyBytes_GET_SIZE(word);
    const unsigned char *w = (const unsigned char *)PyBytes_AS_STRING(word);
    if (n == 0 || blank(w[0]) || blank(w[n - 1])) {
        PyErr_SetString(PyExc_ValueError, "the stop word must be non-empty, without surrounding whitespace");
        return -1;
    }
    if (memchr(w, '\n', (size_t)n) != NULL) {
        PyErr_SetString(PyExc_ValueError, "the stop word must be one line");
        return -1;
    }
    Py_INCREF(word);
    Py_XSETREF(self->word, word);
    Py_INCREF(empty_bytes);
    Py_XSETREF(self->pending, empty_bytes);
    return 0;
}

static PyObject *scanner_feed(Scanner *self, PyObject *arg) {
    Py_buffer data;
    if (self->word == NULL) {
        PyErr_SetString(PyExc_ValueError, "Scanner.__init__ was not called");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = data.buf;
    Py_ssize_t n = data.len, end = -1, off = 0;
    PyObject *word = self->word, *pending = self->pending, *new_pending = NULL;
    const unsigned char *w = (const unsigned char *)PyBytes_AS_STRING(word);
    Py_ssize_t wlen = PyBytes_GET_SIZE(word);
    int r;
    if (pending != Py_None && PyBytes_GET_SIZE(pending) > 0) {
        /* A piece of the word is pending: first the line it begins. */
        const unsigned char *first = memchr(buf, '\n', (size_t)n);
        if (first == NULL) {
            new_pending = joined_candidate(pending, buf, n, word, w, wlen);
            PyBuffer_Release(&data);
            if (new_pending == NULL && PyErr_Occurred())
                return NULL;
            Py_XSETREF(self->pending, new_pending ? new_pending : Py_NewRef(Py_None));
            return PyLong_FromLong(-1);
        }
        if (joined_is_word((const unsigned char *)PyBytes_AS_STRING(pending), PyBytes_GET_SIZE(pending),
                           buf, first - buf, w, wlen)) {
            PyBuffer_Release(&data);
            return PyLong_FromSsize_t(first - buf + 1);
        }
        off = first - buf + 1; /* the rest starts at a line start */
        r = scan_chunk(buf + off, n - off, word, empty_bytes, &end, &new_pending);
    } else {
        r = scan_chunk(buf, n, word, pending, &end, &new_pending);
    }
    PyBuffer_Release(&data);
    if (r < 0)
        return NULL;
    if (end >= 0) {
        Py_XDECREF(new_pending); /* found: the pending text stays as it was */
        return PyLong_FromSsize_t(end + off);
    }
    Py_XSETREF(self->pending, new_pending ? new_pending : Py_NewRef(Py_None));
    return PyLong_FromLong(-1);
}

static void scanner_dealloc(Scanner *self) {
    Py_XDECREF(self->word);
    Py_XDECREF(self->pending);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *scanner_get_pending(Scanner *self, void *closure) {
    return Py_NewRef(self->pending ? self->pending : Py_None);
}

static int scanner_set_pending(Scanner *self, PyObject *value, void *closure) {
    if (value == NULL || (value != Py_None && !PyBytes_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "pending must be None or bytes");
        return -1;
    }
    Py_XSETREF(self->pending, Py_NewRef(value));
    return 0;
}

static PyObject *scanner_get_word(Scanner *self, void *closure) {
    return Py_NewRef(self->word ? self->word : Py_None);
}

static PyMethodDef scanner_methods[] = {
    {"feed", (PyCFunction)scanner_feed, METH_O,
     "feed(data) -> index just past the LF ending the first stop line in data, or -1"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef scanner_getset[] = {
    {"pending", (getter)scanner_get_pending, (setter)scanner_set_pending, "the unfinished line's text, or None", NULL},
    {"word", (getter)scanner_get_word, NULL, "the stop word", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netecho._speedups.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scanner(word): netecho.stopword.StopWordScanner in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)scanner_init,
    .tp_dealloc = (destructor)scanner_dealloc,
    .tp_methods = scanner_methods,
    .tp_getset = scanner_getset,
};

/*
 * recv_datagrams(fd, count) -> (list of (data, (host, port)), dropped):
 * up to count (at most BATCH) datagrams waiting on the non-blocking IPv4 or
 * IPv6 socket fd, read with one recvmmsg(); an empty list when none is
 * waiting; OSError otherwise (as socket.recvfrom() raises it). Each
 * datagram is whole (buffers of 64 KiB); hosts are what socket.recvfrom()
 * gives (inet_ntop(), so "::ffff:127.0.0.1" on a dual-stack socket).
 * dropped: the socket's count of datagrams the kernel dropped (SO_RXQ_OVFL,
 * when it is on), as the last datagram read carried it; -1 if none did.
 */
#define BATCH 16
#define DGRAM_MAX 65536
static unsigned char *dgram_bufs;
static struct sockaddr_storage dgram_from[BATCH];
static union {
    char buf[CMSG_SPACE(sizeof(uint32_t))];
    struct cmsghdr align;
} dgram_control[BATCH];

/* The last SOURCES source addresses seen and their (host, port) tuples,
 * made once: a busy peer costs no formatting per datagram. */
#define SOURCES 64
typedef struct {
    struct sockaddr_storage from;
    socklen_t len;
    PyObject *addr;
} Source;
static Source sources[SOURCES];
static int sources_next;

static PyObject *source_of(const struct sockaddr_storage *from, socklen_t len) {
    for (int j = 0; j < SOURCES; j++)
        if (sources[j].addr != NULL && sources[j].len == len && memcmp(&sources[j].from, from, len) == 0)
            return sources[j].addr;
    char host[INET6_ADDRSTRLEN];
    int port;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)from;
        if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(in->sin_port);
    } else if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)from;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        port = ntohs(in6->sin6_port);
    } else {
        PyErr_SetString(PyExc_ValueError, "recv_datagrams: not an IPv4 or IPv6 socket");
        return NULL;
    }
    PyObject *addr = Py_BuildValue("(si)", host, port);
    if (addr == NULL)
        return NULL;
    Source *src = &sources[sources_next];
    sources_next = (sources_next + 1) % SOURCES;
    Py_XSETREF(src->addr, addr);
    memcpy(&src->from, from, len);
    src->len = len;
    return addr;
}

static PyObject *recv_datagrams(PyObject *self, PyObject *args) {
    int fd, count;
    if (!PyArg_ParseTuple(args, "ii", &fd, &count))
        return NULL;
    if (count < 1) count = 1;
    if (count > BATCH) count = BATCH;
    if (dgram_bufs == NULL && (dgram_bufs = PyMem_RawMalloc((size_t)BATCH * DGRAM_MAX)) == NULL)
        return PyErr_NoMemory();
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
        msgs[i].msg_hdr.msg_control = dgram_control[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof dgram_control[i].buf;
    }
    /* MSG_DONTWAIT: it never blocks, so the GIL (which guards these static
     * buffers) is kept throughout. */
    int got = recvmmsg(fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return Py_BuildValue("([]i)", -1);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    long long dropped = -1;
    PyObject *list = PyList_New(got);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c != NULL; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
                uint32_t count;
                memcpy(&count, CMSG_DATA(c), sizeof count);
                dropped = count;
            }
        }
        PyObject *addr = source_of(&dgram_from[i], msgs[i].msg_hdr.msg_namelen);
        PyObject *item = addr == NULL ? NULL
                         : Py_BuildValue("(y#O)", (const char *)dgram_bufs + (size_t)i * DGRAM_MAX,
                                         (Py_ssize_t)msgs[i].msg_len, addr);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    PyObject *result = Py_BuildValue("(OL)", list, dropped);
    Py_DECREF(list);
    return result;
}

/*
 * send_datagrams(fd, family, datagrams) -> list of (index, errno): send
 * every (data, (host, port)) of the list datagrams on the non-blocking
 * socket fd (of address family AF_INET or AF_INET6; IPv4 hosts on an IPv6
 * socket are sent to their ::ffff: form) with as few sendmmsg() calls as
 * it takes; the ones that failed come back with their errno (by index),
 * the rest were sent, in order. A host that is not an address literal fails with
 * EINVAL (nothing is resolved).
 */
#define SEND_BATCH 64

static int to_sockaddr(PyObject *addr, int family, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2 || !PyArg_ParseTuple(addr, "si|ii", &host, &port, &(int){0}, &(int){0})) {
        PyErr_Clear();
        return -1;
    }
    if (port < 0 || port > 65535)
        return -1;
    memset(out, 0, sizeof *out);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return -1;
        *len = sizeof *in;
        return 0;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
        struct in_addr v4;
        if (inet_pton(AF_INET, host, &v4) != 1)
            return -1;
        in6->sin6_addr.s6_addr[10] = 0xff;
        in6->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&in6->sin6_addr.s6_addr[12], &v4, 4);
    }
    *len = sizeof *in6;
    return 0;
}

/* Note that datagrams[index] failed with err; -1 (exception set) if even that fails. */
static int note_failure(PyObject *failed, Py_ssize_t index, int err) {
    PyObject *f = Py_BuildValue("(ni)", index, err);
    int r = f == NULL ? -1 : PyList_Append(failed, f);
    Py_XDECREF(f);
    return r;
}

static PyObject *send_datagrams(PyObject *self, PyObject *args) {
    int fd, family;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &list))
        return NULL;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "send_datagrams: not an IPv4 or IPv6 socket");
        return NULL;
    }
    PyObject *failed = PyList_New(0);
    if (failed == NULL)
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(list), start = 0;
    struct mmsghdr msgs[SEND_BATCH];
    struct iovec iov[SEND_BATCH];
    struct sockaddr_storage to[SEND_BATCH];
    Py_buffer views[SEND_BATCH];
    Py_ssize_t index[SEND_BATCH];
    int n = 0; /* views[0:n] are held */
    while (start < total) {
        n = 0;
        memset(msgs, 0, sizeof msgs);
        /* Fill a batch with the datagrams that can be sent; note the others. */
        while (start < total && n < SEND_BATCH) {
            PyObject *item = PyList_GET_ITEM(list, start);
            socklen_t len;
            int bad = !PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                      to_sockaddr(PyTuple_GET_ITEM(item, 1), family, &to[n], &len) < 0 ||
                      PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[n], PyBUF_SIMPLE) < 0;
            if (bad) {
                PyErr_Clear();
                if (note_failure(failed, start, EINVAL) < 0)
                    goto fail;
                start++;
                continue;
            }
            iov[n].iov_base = views[n].buf;
            iov[n].iov_len = (size_t)views[n].len;
            msgs[n].msg_hdr.msg_iov = &iov[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            msgs[n].msg_hdr.msg_name = &to[n];
            msgs[n].msg_hdr.msg_namelen = len;
            index[n] = start++;
            n++;
        }
        int done = 0;
        while (done < n) {
            int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                /* The first of the rest failed: note it, go on after it. */
                if (note_failure(failed, index[done], errno) < 0)
                    goto fail;
                done++;
            } else {
                done += r;
            }
        }
        for (int k = 0; k < n; k++)
            PyBuffer_Release(&views[k]);
        n = 0;
    }
    if (PyList_Sort(failed) < 0) {
        Py_DECREF(failed);
        return NULL;
    }
    return failed;
fail:
    for (int k = 0; k < n; k++)
        PyBuffer_Release(&views[k]);
    Py_DECREF(failed);
    return NULL;
}

/*
 * poll_dispatch(epfd, maxevents, timeout, selectables, direct, done, lost)
 * -> list: one wait of
 * netecho's epoll reactor (netecho/reactor.py). epoll_wait() (without the
 * GIL), then for each event that is plain EPOLLIN, selectables[fd].doRead()
 * is called here; what the reactor's Python code must still do comes back
 * as (fd, events, outcome): events 0 with outcome the doRead() result to
 * disconnect with, -1 with the exception it raised; any other event with
 * outcome None, for Twisted's own dispatch. timeout: seconds (float, or
 * None/negative to wait without end). Protocol-agnostic: any selectable.
 *
 * For a selectable whose type is one of `direct` (netecho's stream
 * transports, whose doRead() is exactly this, with a bufferSize of 64 KiB)
 * and whose doRead was not replaced on the instance, the read itself is
 * done here: recv() of up to 64 KiB into a new bytes object, then
 * selectable.protocol.dataReceived(data); end of file and errors come back
 * as `done` and `lost` (Twisted's CONNECTION_DONE and CONNECTION_LOST).
 */
#include <sys/epoll.h>
#include <math.h>

static PyObject *str_doRead, *str_protocol, *str_dataReceived;

/* What netecho.transports._EagerWrites.doRead does, for a selectable of a
 * `direct` type: a new reference to the outcome (Py_None, done or lost), or
 * NULL with an exception set (dataReceived raised). */
static PyObject *direct_read(PyObject *selectable, int fd, PyObject *done, PyObject *lost) {
    PyObject *data = PyBytes_FromStringAndSize(NULL, 65536);
    if (data == NULL)
        return NULL;
    ssize_t n = recv(fd, PyBytes_AS_STRING(data), 65536, 0);
    if (n <= 0) {
        Py_DECREF(data);
        if (n == 0)
            return Py_NewRef(done);
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return Py_NewRef(Py_None);
        return Py_NewRef(lost);
    }
    if (n < 65536 && _PyBytes_Resize(&data, n) < 0)
        return NULL;
    PyObject *protocol = PyObject_GetAttr(selectable, str_protocol);
    if (protocol == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    PyObject *r = PyObject_CallMethodOneArg(protocol, str_dataReceived, data);
    Py_DECREF(protocol);
    Py_DECREF(data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(Py_None);
}

static PyObject *poll_dispatch(PyObject *self, PyObject *args) {
    int epfd, maxevents;
    PyObject *timeout_obj, *selectables, *direct, *done, *lost;
    if (!PyArg_ParseTuple(args, "iiOO!O!OO", &epfd, &maxevents, &timeout_obj, &PyDict_Type, &selectables,
                          &PyTuple_Type, &direct, &done, &lost))
        return NULL;
    int ms = -1;
    if (timeout_obj != Py_None) {
        double t = PyFloat_AsDouble(timeout_obj);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (t >= 0)
            ms = t * 1000.0 > (double)INT_MAX ? INT_MAX : (int)ceil(t * 1000.0);
    }
    if (maxevents < 1) maxevents = 1;
    if (maxevents > 1024) maxevents = 1024;
    struct epoll_event events[1024];
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = epoll_wait(epfd, events, maxevents, ms);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        if (errno == EINTR)
            return PyErr_CheckSignals() < 0 ? NULL : PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *later = PyList_New(0);
    if (later == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        uint32_t ev = events[i].events;
        PyObject *key = PyLong_FromLong(fd), *item = NULL;
        if (key == NULL)
            goto fail;
        if (ev != EPOLLIN) {
            item = Py_BuildValue("(iiO)", fd, (int)ev, Py_None);
        } else {
            PyObject *selectable = PyDict_GetItemWithError(selectables, key); /* borrowed */
            if (selectable == NULL) {
                Py_DECREF(key);
                if (PyErr_Occurred())
                    goto fail;
                continue;
            }
            Py_INCREF(selectable);
            PyObject *why = NULL;
            int is_direct = 0;
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(direct); k++)
                if ((PyObject *)Py_TYPE(selectable) == PyTuple_GET_ITEM(direct, k))
                    is_direct = 1;
            if (is_direct) {
                /* Unless doRead was replaced on the instance (Twisted's
                 * abortConnection does): then that is what runs. */
                PyObject *dict = PyObject_GenericGetDict(selectable, NULL);
                if (dict == NULL) {
                    Py_DECREF(selectable);
                    Py_DECREF(key);
                    goto fail;
                }
                is_direct = PyDict_GetItemWithError(dict, str_doRead) == NULL && !PyErr_Occurred();
                Py_DECREF(dict);
                if (PyErr_Occurred()) {
                    Py_DECREF(selectable);
                    Py_DECREF(key);
                    goto fail;
                }
            }
            if (is_direct)
                why = direct_read(selectable, fd, done, lost);
            else
                why = PyObject_CallMethodNoArgs(selectable, str_doRead);
            Py_DECREF(selectable);
            if (why == NULL) {
                PyObject *type, *exc, *tb;
                PyErr_Fetch(&type, &exc, &tb);
                PyErr_NormalizeException(&type, &exc, &tb);
                if (exc != NULL && tb != NULL)
                    PyException_SetTraceback(exc, tb);
                item = exc == NULL ? NULL : Py_BuildValue("(iiO)", fd, -1, exc);
                Py_XDECREF(type);
                Py_XDECREF(exc);
                Py_XDECREF(tb);
            } else {
                int truth = PyObject_IsTrue(why);
                if (truth > 0)
                    item = Py_BuildValue("(iiO)", fd, 0, why);
                Py_DECREF(why);
                if (truth < 0) {
                    Py_DECREF(key);
                    goto fail;
                }
                if (truth == 0) {
                    Py_DECREF(key);
                    continue;
                }
            }
        }
        Py_DECREF(key);
        if (item == NULL || PyList_Append(later, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    return later;
fail:
    Py_DECREF(later);
    return NULL;
}

static PyMethodDef methods[] = {
    {"send_datagrams", send_datagrams, METH_VARARGS,
     "send_datagrams(fd, family, [(data, (host, port)), ...]) -> [(index, errno), ...]: sendmmsg() of a list"},
    {"poll_dispatch", poll_dispatch, METH_VARARGS,
     "poll_dispatch(epfd, maxevents, timeout, selectables, direct, done, lost) -> [(fd, events, outcome)]: one reactor wait (see _speedups.c)"},
    {"recv_datagrams", recv_datagrams, METH_VARARGS,
     "recv_datagrams(fd, count) -> ([(data, (host, port)), ...], dropped): up to count datagrams by one recvmmsg()"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "netecho._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    if (empty_bytes == NULL && (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
        return NULL;
    if (str_doRead == NULL && ((str_doRead = PyUnicode_InternFromString("doRead")) == NULL ||
                               (str_protocol = PyUnicode_InternFromString("protocol")) == NULL ||
                               (str_dataReceived = PyUnicode_InternFromString("dataReceived")) == NULL))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
