/*
 * netecho._scan: the stop-word scanner's inner loop in C (optional: without
 * a C compiler netecho installs without it and netecho/stopword.py uses a
 * regular expression instead; both give the same answers, see
 * tests/test_stopword.py).
 *
 * inner_stop_line(data, word, start, end) -> int
 *
 *   data[start] is a line feed. Returns the index of the line feed that ends
 *   the first line after it whose text, trimmed of whitespace (what
 *   bytes.strip() trims), equals word; only line feeds before end count.
 *   -1 if there is none. memchr() finds the line feeds, so binary data with
 *   few of them costs a few nanoseconds per kilobyte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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
static PyObject *feed(PyObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *word_obj, *pending, *result = NULL, *new_pending = NULL;
    Py_ssize_t end = -1;
    if (!PyArg_ParseTuple(args, "y*SO", &data, &word_obj, &pending))
        return NULL;
    const unsigned char *buf = data.buf, *w = (const unsigned char *)PyBytes_AS_STRING(word_obj);
    Py_ssize_t n = data.len, wlen = PyBytes_GET_SIZE(word_obj);
    int at_line_start = pending != Py_None;  /* pending == b"" */
    if (at_line_start && (!PyBytes_Check(pending) || PyBytes_GET_SIZE(pending) != 0)) {
        PyBuffer_Release(&data);
        return Py_BuildValue("nO", (Py_ssize_t)-2, pending);
    }
    const unsigned char *first = memchr(buf, '\n', (size_t)n);
    if (first == NULL) {
        if (at_line_start)
            new_pending = candidate(buf, n, word_obj, w, wlen);
        goto done;
    }
    /* The unfinished line from the last chunk (if it began at a line
     * start, pending is b""), then the lines inside this chunk. */
    const unsigned char *last = first, *stop = buf + n;
    const unsigned char *lf = stop_line(at_line_start ? buf : first + 1, stop, w, wlen, &last);
    if (lf != NULL) {
        end = lf - buf + 1;
        Py_INCREF(pending);
        new_pending = pending;
        goto done;
    }
    new_pending = candidate(last + 1, stop - (last + 1), word_obj, w, wlen);
done:
    if (PyErr_Occurred()) {
        Py_XDECREF(new_pending);
        PyBuffer_Release(&data);
        return NULL;
    }
    result = Py_BuildValue("nO", end, new_pending ? new_pending : Py_None);
    Py_XDECREF(new_pending);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"feed", feed, METH_VARARGS,
     "feed(data, word, pending) -> (end, pending): StopWordScanner.feed for a None or empty pending; (-2, pending) otherwise"},
    {"inner_stop_line", inner_stop_line, METH_VARARGS,
     "inner_stop_line(data, word, start, end): index of the LF ending the first stop line after data[start], or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "netecho._scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
