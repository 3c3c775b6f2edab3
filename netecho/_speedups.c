/*
 * netecho._speedups: two things in C, optional: without a C compiler
 * netecho installs without it and uses its pure-Python twins, which give
 * the same answers (the tests compare them). Only pure functions and
 * protocol-agnostic I/O live here, never a rule of netecho's:
 *
 * - the stop-word scan (netecho/stopword.py): feed(), inner_stop_line();
 * - recv_datagrams(): a batch of datagrams by one recvmmsg(), for the UDP
 *   port (netecho/transports.py), IPv4 and IPv6 alike.
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
 * recv_datagrams(fd, count) -> list of (data, (host, port)): up to count
 * (at most BATCH) datagrams waiting on the non-blocking IPv4 or IPv6
 * socket fd, read with one recvmmsg(); [] when none is waiting; OSError
 * otherwise (as socket.recvfrom() raises it). Each datagram is whole
 * (buffers of 64 KiB); hosts are what socket.recvfrom() gives
 * (inet_ntop(), so "::ffff:127.0.0.1" on a dual-stack socket).
 */
#define BATCH 16
#define DGRAM_MAX 65536
static unsigned char *dgram_bufs;
static struct sockaddr_storage dgram_from[BATCH];

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
    }
    /* MSG_DONTWAIT: it never blocks, so the GIL (which guards these static
     * buffers) is kept throughout. */
    int got = recvmmsg(fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *list = PyList_New(got);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
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
    return list;
}

static PyMethodDef methods[] = {
    {"recv_datagrams", recv_datagrams, METH_VARARGS,
     "recv_datagrams(fd, count) -> [(data, (host, port)), ...]: up to count datagrams by one recvmmsg()"},
    {"feed", feed, METH_VARARGS,
     "feed(data, word, pending) -> (end, pending): StopWordScanner.feed for a None or empty pending; (-2, pending) otherwise"},
    {"inner_stop_line", inner_stop_line, METH_VARARGS,
     "inner_stop_line(data, word, start, end): index of the LF ending the first stop line after data[start], or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "netecho._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
