/*
 * netecho._speedups: netecho's hot loops in C, optional: without a C
 * compiler netecho installs without it and uses its pure-Python code, which
 * gives the same answers (the tests run both).
 *
 * - the stop-word scanner (netecho/stopword.py): feed(), inner_stop_line();
 * - reading a batch of UDP datagrams with one recvmmsg() (netecho/datagram.py):
 *   recv_datagrams();
 * - one read turn of a stream echo: recv, scan, send (netecho/echo.py):
 *   echo_stream().
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

static PyObject *echo_stream(PyObject *self, PyObject *args) {
    int fd;
    PyObject *word_obj, *pending, *new_pending = NULL, *result;
    Py_ssize_t end = -1;
    if (!PyArg_ParseTuple(args, "iOO", &fd, &word_obj, &pending))
        return NULL;
    if (word_obj != Py_None && !PyBytes_Check(word_obj)) {
        PyErr_SetString(PyExc_TypeError, "echo_stream: word must be bytes or None");
        return NULL;
    }
    /* Non-blocking calls: the GIL stays held (and guards stream_buf). */
    ssize_t n = recv(fd, stream_buf, sizeof stream_buf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (n == 0)
        return Py_BuildValue("inOO", 3, (Py_ssize_t)0, pending, Py_None);
    if (word_obj != Py_None) {
        int r = scan_chunk(stream_buf, n, word_obj, pending, &end, &new_pending);
        if (r < 0)
            return NULL;
        if (r == 1 || end >= 0) {
            Py_XDECREF(new_pending);
            return Py_BuildValue("inOy#", 2, (Py_ssize_t)n, pending, (const char *)stream_buf, (Py_ssize_t)n);
        }
    } else {
        Py_INCREF(pending);
        new_pending = pending;
    }
    ssize_t sent = send(fd, stream_buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0)
        sent = 0; /* EAGAIN, or an error transport.write() will find and report */
    if (sent == n)
        result = Py_BuildValue("inOO", 0, (Py_ssize_t)n, new_pending ? new_pending : Py_None, Py_None);
    else
        result = Py_BuildValue("inOy#", 1, (Py_ssize_t)n, new_pending ? new_pending : Py_None,
                               (const char *)stream_buf + sent, (Py_ssize_t)(n - sent));
    Py_XDECREF(new_pending);
    return result;
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
    struct sockaddr_in from[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = dgram_bufs + (size_t)i * DGRAM_MAX;
        iov[i].iov_len = DGRAM_MAX;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = recvmmsg(fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *list = PyList_New(got);
    if (list == NULL)
        return NULL;
    for (int i = 0; i < got; i++) {
        char host[INET_ADDRSTRLEN];
        if (from[i].sin_family != AF_INET ||
            inet_ntop(AF_INET, &from[i].sin_addr, host, sizeof host) == NULL) {
            Py_DECREF(list);
            PyErr_SetString(PyExc_ValueError, "recv_datagrams: not an IPv4 socket");
            return NULL;
        }
        PyObject *item = Py_BuildValue("(y#(si))", (const char *)iov[i].iov_base, (Py_ssize_t)msgs[i].msg_len,
                                       host, (int)ntohs(from[i].sin_port));
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyMethodDef methods[] = {
    {"echo_stream", echo_stream, METH_VARARGS,
     "echo_stream(fd, word, pending): one read turn of a stream echo (see netecho/_speedups.c)"},
    {"recv_datagrams", recv_datagrams, METH_VARARGS,
     "recv_datagrams(fd, count) -> [(data, (host, port)), ...]: up to count IPv4 datagrams by one recvmmsg()"},
    {"feed", feed, METH_VARARGS,
     "feed(data, word, pending) -> (end, pending): StopWordScanner.feed for a None or empty pending; (-2, pending) otherwise"},
    {"inner_stop_line", inner_stop_line, METH_VARARGS,
     "inner_stop_line(data, word, start, end): index of the LF ending the first stop line after data[start], or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "netecho._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
