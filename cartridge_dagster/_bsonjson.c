/* BSON bytes -> the raw landing contract's JSON, without building Python objects.
 *
 * convert(raw: bytes) -> (canonical _id, JSON bytes) | None
 * document(raw: bytes) -> JSON bytes | None   (the same walk, no _id required)
 * documents(array: bytes) -> [BSON bytes, ...] | None   (a cursor reply's batch, cut)
 * copy_rows(docs, tail: bytes, max_bytes: int) -> (COPY data, rows, [index, ...])
 *     a page of documents straight into PostgreSQL's binary COPY format (see copy_rows)
 *
 * The fast path of cartridge_dagster.documents.document_json for documents read as raw BSON
 * (PyMongo's RawBSONDocument: the bytes as they came off the wire). It writes, byte for byte,
 * what the Python conversion writes for the types it knows -- double (finite, not -0.0; the
 * text orjson writes), string, document, array, binary (UUID subtypes 3/4 as a canonical UUID
 * string, others base64), ObjectId (24 hex), bool, UTC datetime (ISO-8601 with milliseconds
 * and Z, years 1..9999), null, int32, int64 and Decimal128 in plain notation (not -0) -- and
 * returns None for everything a policy or the slower Python conversion must decide: NUL in
 * strings, NaN, infinities and negative zeros, other BSON types, dates out of range, invalid
 * UTF-8, malformed BSON (any length or terminator that does not frame exactly), nesting
 * deeper than MAX_DEPTH, and for convert() an _id that is missing or not an ObjectId, string or
 * integer. None is never an error: the caller decodes the document and runs the Python
 * conversion, which applies the policies and raises what it must (a dead letter names the
 * field, or says why the BSON does not decode).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 200

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

static int buf_grow(buf_t *b, size_t extra) {
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const char *s, size_t n) {
    if (buf_grow(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int buf_putc(buf_t *b, char c) {
    if (b->len >= b->cap && buf_grow(b, 1) < 0) return -1;
    b->data[b->len++] = c;
    return 0;
}

/* Result codes of the walk: OK, FALLBACK (let Python decide), NOMEM (a Python error is set). */
enum { OK = 0, FALLBACK = 1, NOMEM = 2 };

static inline int32_t rd_i32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

static inline uint64_t rd_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static const char HEX[] = "0123456789abcdef";

/* Valid UTF-8 as Python's strict decoder sees it (no overlongs, surrogates or > U+10FFFF). */
static int utf8_ok(const uint8_t *s, size_t n, size_t *i) {
    size_t k = *i;
    uint8_t c = s[k];
    if (c >= 0xC2 && c <= 0xDF) {
        if (k + 1 >= n || (s[k + 1] & 0xC0) != 0x80) return 0;
        *i = k + 2;
        return 1;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (k + 2 >= n) return 0;
        uint8_t c1 = s[k + 1], c2 = s[k + 2];
        if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && c1 < 0xA0) return 0;  /* overlong */
        if (c == 0xED && c1 >= 0xA0) return 0; /* surrogate */
        *i = k + 3;
        return 1;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (k + 3 >= n) return 0;
        uint8_t c1 = s[k + 1], c2 = s[k + 2], c3 = s[k + 3];
        if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && c1 < 0x90) return 0; /* overlong */
        if (c == 0xF4 && c1 >= 0x90) return 0; /* > U+10FFFF */
        *i = k + 4;
        return 1;
    }
    return 0;
}

/* A JSON string of n bytes (escapes as orjson writes them); NUL or invalid UTF-8: FALLBACK. */
static int put_string(buf_t *b, const uint8_t *s, size_t n) {
    if (buf_grow(b, n + 2) < 0) return NOMEM;
    b->data[b->len++] = '"';
    size_t i = 0, start = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            if (!utf8_ok(s, n, &i)) return FALLBACK;
            continue;
        }
        if (c == 0) return FALLBACK;
        if (buf_put(b, (const char *)s + start, i - start) < 0) return NOMEM;
        char esc[7];
        const char *e;
        size_t elen = 2;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default:
            esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = HEX[c >> 4]; esc[5] = HEX[c & 15]; esc[6] = 0;
            e = esc;
            elen = 6;
        }
        if (buf_put(b, e, elen) < 0) return NOMEM;
        i++;
        start = i;
    }
    if (buf_put(b, (const char *)s + start, n - start) < 0) return NOMEM;
    if (buf_putc(b, '"') < 0) return NOMEM;
    return OK;
}

static int put_hex(buf_t *b, const uint8_t *p, size_t n) {
    if (buf_grow(b, 2 * n) < 0) return NOMEM;
    for (size_t i = 0; i < n; i++) {
        b->data[b->len++] = HEX[p[i] >> 4];
        b->data[b->len++] = HEX[p[i] & 15];
    }
    return OK;
}

static int put_uuid(buf_t *b, const uint8_t *p) {
    static const int groups[5] = {4, 2, 2, 2, 6};
    if (buf_putc(b, '"') < 0) return NOMEM;
    for (int g = 0; g < 5; g++) {
        if (g && buf_putc(b, '-') < 0) return NOMEM;
        if (put_hex(b, p, groups[g]) != OK) return NOMEM;
        p += groups[g];
    }
    return buf_putc(b, '"') < 0 ? NOMEM : OK;
}

static int put_base64(buf_t *b, const uint8_t *p, size_t n) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (buf_grow(b, 4 * ((n + 2) / 3) + 2) < 0) return NOMEM;
    char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = T[v >> 18]; *o++ = T[(v >> 12) & 63]; *o++ = T[(v >> 6) & 63]; *o++ = T[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *o++ = T[v >> 18]; *o++ = T[(v >> 12) & 63]; *o++ = '='; *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        *o++ = T[v >> 18]; *o++ = T[(v >> 12) & 63]; *o++ = T[(v >> 6) & 63]; *o++ = '=';
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return OK;
}

/* Days since 1970-01-01 -> civil date (Howard Hinnant's algorithm). */
static void civil(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yy + (*m <= 2);
}

/* Milliseconds since the epoch: 0001-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z. */
#define MS_MIN (-62135596800000LL)
#define MS_MAX (253402300799999LL)

static int put_datetime(buf_t *b, int64_t ms) {
    if (ms < MS_MIN || ms > MS_MAX) return FALLBACK;
    int64_t days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
    int64_t rem = ms - days * 86400000;
    int64_t y;
    unsigned mo, d;
    civil(days, &y, &mo, &d);
    char out[32];
    int n = snprintf(out, sizeof out, "\"%04d-%02u-%02uT%02d:%02d:%02d.%03dZ\"", (int)y, mo, d,
                     (int)(rem / 3600000), (int)(rem / 60000 % 60), (int)(rem / 1000 % 60),
                     (int)(rem % 1000));
    return buf_put(b, out, (size_t)n) < 0 ? NOMEM : OK;
}

/* A finite double as orjson writes it: the shortest repr digits, plain notation from 1e-5 up
 * to 1e16, otherwise d.ddde-N / d.ddde+N with the exponent not zero-padded. repr differs in
 * two ways only (tests/unit/test_bsonjson.py holds the two to the same bytes): it pads the
 * exponent to two digits (1e-07) and switches to scientific notation below 1e-4 (1e-05). */
static int put_double(buf_t *b, double v) {
    if (!isfinite(v)) return FALLBACK;
    if (v == 0.0 && signbit(v)) return FALLBACK; /* -0.0: the negative-zero policy counts it */
    char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) return NOMEM;
    int rc = OK;
    char *e = strchr(text, 'e');
    if (e == NULL) {
        rc = buf_put(b, text, strlen(text)) < 0 ? NOMEM : OK;
    } else {
        int exponent = atoi(e + 1);
        if (exponent == -5) { /* [-]d[.ddd]e-05 -> [-]0.0000d[ddd] */
            char out[64];
            size_t n = 0;
            const char *m = text;
            if (*m == '-') out[n++] = *m++;
            memcpy(out + n, "0.0000", 6);
            n += 6;
            for (; m < e; m++)
                if (*m != '.') out[n++] = *m;
            rc = buf_put(b, out, n) < 0 ? NOMEM : OK;
        } else { /* mantissa, 'e', sign, exponent digits without leading zeros */
            char out[16];
            int n = snprintf(out, sizeof out, "e%c%d", exponent < 0 ? '-' : '+', abs(exponent));
            if (buf_put(b, text, (size_t)(e - text)) < 0 || buf_put(b, out, (size_t)n) < 0)
                rc = NOMEM;
        }
    }
    PyMem_Free(text);
    return rc;
}

/* Decimal128 in the plain notation Decimal.__str__ uses (exponent <= 0, adjusted >= -6). */
static int put_decimal128(buf_t *b, const uint8_t *p) {
    uint64_t low = rd_u64(p), high = rd_u64(p + 8);
    unsigned __int128 coef;
    int exponent;
    if ((high & (3ULL << 61)) == (3ULL << 61)) {
        if ((high & (3ULL << 59)) == (3ULL << 59)) return FALLBACK; /* NaN, Infinity */
        /* the large-coefficient form: 0b100 + 111 bits, always past 10**34 - 1, so 0 */
        coef = 0;
        exponent = (int)((high >> 47) & 0x3FFF) - 6176;
    } else {
        coef = ((unsigned __int128)(high & 0x1FFFFFFFFFFFFULL) << 64) | low;
        unsigned __int128 max = 1;
        for (int i = 0; i < 34; i++) max *= 10;
        if (coef > max - 1) coef = 0; /* a non-canonical coefficient means 0 (IEEE 754-2008) */
        exponent = (int)((high >> 49) & 0x3FFF) - 6176;
    }
    if (coef == 0 && (high >> 63)) return FALLBACK; /* -0: the negative-zero policy counts it */
    char digits[40];
    int size = 0;
    do {
        digits[size++] = (char)('0' + (int)(coef % 10));
        coef /= 10;
    } while (coef);
    for (int i = 0; i < size / 2; i++) {
        char t = digits[i]; digits[i] = digits[size - 1 - i]; digits[size - 1 - i] = t;
    }
    if (!(exponent <= 0 && exponent + size > -6)) return FALLBACK;
    char text[80];
    int n = 0;
    if (high >> 63) text[n++] = '-';
    if (exponent == 0) {
        memcpy(text + n, digits, (size_t)size); n += size;
    } else if (size > -exponent) {
        int whole = size + exponent;
        memcpy(text + n, digits, (size_t)whole); n += whole;
        text[n++] = '.';
        memcpy(text + n, digits + whole, (size_t)(-exponent)); n += -exponent;
    } else {
        text[n++] = '0'; text[n++] = '.';
        for (int i = 0; i < -exponent - size; i++) text[n++] = '0';
        memcpy(text + n, digits, (size_t)size); n += size;
    }
    return buf_put(b, text, (size_t)n) < 0 ? NOMEM : OK;
}

/* Length of a C string key within [p, end), or -1 when unterminated. */
static inline Py_ssize_t cstr_len(const uint8_t *p, const uint8_t *end) {
    const uint8_t *z = memchr(p, 0, (size_t)(end - p));
    return z ? (Py_ssize_t)(z - p) : -1;
}

static int put_document(buf_t *b, const uint8_t *p, size_t n, int array, int depth);

/* One element value of type t at p (at most avail bytes); *used receives its size. */
static int put_value(buf_t *b, uint8_t t, const uint8_t *p, size_t avail, size_t *used,
                     int depth) {
    int32_t len;
    switch (t) {
    case 0x01: /* double */
        if (avail < 8) return FALLBACK;
        *used = 8;
        {
            double v;
            uint64_t bits = rd_u64(p);
            memcpy(&v, &bits, 8);
            return put_double(b, v);
        }
    case 0x02: /* string */
        if (avail < 5) return FALLBACK;
        len = rd_i32(p);
        if (len < 1 || (size_t)len > avail - 4 || p[4 + len - 1] != 0) return FALLBACK;
        *used = 4 + (size_t)len;
        return put_string(b, p + 4, (size_t)len - 1);
    case 0x03: /* document */
    case 0x04: /* array */
        if (avail < 5) return FALLBACK;
        len = rd_i32(p);
        if (len < 5 || (size_t)len > avail) return FALLBACK;
        *used = (size_t)len;
        return put_document(b, p, (size_t)len, t == 0x04, depth + 1);
    case 0x05: /* binary */
        if (avail < 5) return FALLBACK;
        len = rd_i32(p);
        if (len < 0 || (size_t)len > avail - 5) return FALLBACK;
        *used = 5 + (size_t)len;
        {
            uint8_t sub = p[4];
            if (sub == 2) return FALLBACK; /* the old binary form: PyMongo unwraps it */
            if ((sub == 3 || sub == 4) && len == 16) return put_uuid(b, p + 5);
            return put_base64(b, p + 5, (size_t)len);
        }
    case 0x07: /* ObjectId */
        if (avail < 12) return FALLBACK;
        *used = 12;
        if (buf_putc(b, '"') < 0 || put_hex(b, p, 12) != OK || buf_putc(b, '"') < 0)
            return NOMEM;
        return OK;
    case 0x08: /* bool */
        if (avail < 1 || p[0] > 1) return FALLBACK;
        *used = 1;
        return (p[0] ? buf_put(b, "true", 4) : buf_put(b, "false", 5)) < 0 ? NOMEM : OK;
    case 0x09: /* UTC datetime */
        if (avail < 8) return FALLBACK;
        *used = 8;
        return put_datetime(b, (int64_t)rd_u64(p));
    case 0x0A: /* null */
        *used = 0;
        return buf_put(b, "null", 4) < 0 ? NOMEM : OK;
    case 0x10: /* int32 */
        if (avail < 4) return FALLBACK;
        *used = 4;
        {
            char out[16];
            int k = snprintf(out, sizeof out, "%d", (int)rd_i32(p));
            return buf_put(b, out, (size_t)k) < 0 ? NOMEM : OK;
        }
    case 0x12: /* int64 */
        if (avail < 8) return FALLBACK;
        *used = 8;
        {
            char out[24];
            int k = snprintf(out, sizeof out, "%lld", (long long)(int64_t)rd_u64(p));
            return buf_put(b, out, (size_t)k) < 0 ? NOMEM : OK;
        }
    case 0x13: /* Decimal128 */
        if (avail < 16) return FALLBACK;
        *used = 16;
        return put_decimal128(b, p);
    default: /* regex, code, timestamp, min/max key, undefined, symbol, DBPointer ... */
        return FALLBACK;
    }
}

static int put_document(buf_t *b, const uint8_t *p, size_t n, int array, int depth) {
    if (depth > MAX_DEPTH) return FALLBACK;
    if (n < 5 || (size_t)rd_i32(p) != n || p[n - 1] != 0) return FALLBACK;
    const uint8_t *end = p + n - 1, *q = p + 4;
    if (buf_putc(b, array ? '[' : '{') < 0) return NOMEM;
    int first = 1;
    while (q < end) {
        uint8_t t = *q++;
        Py_ssize_t klen = cstr_len(q, end);
        if (klen < 0) return FALLBACK;
        if (!first && buf_putc(b, ',') < 0) return NOMEM;
        first = 0;
        if (!array) {
            int rc = put_string(b, q, (size_t)klen);
            if (rc != OK) return rc;
            if (buf_putc(b, ':') < 0) return NOMEM;
        }
        q += klen + 1;
        size_t used = 0;
        int rc = put_value(b, t, q, (size_t)(end - q), &used, depth);
        if (rc != OK) return rc;
        q += used;
    }
    if (q != end) return FALLBACK;
    return buf_putc(b, array ? ']' : '}') < 0 ? NOMEM : OK;
}

/* Size of the element value of type t at q (avail bytes left), or -1 when malformed. */
static Py_ssize_t value_size(uint8_t t, const uint8_t *q, size_t avail) {
    size_t used;
    switch (t) {
    case 0x01: case 0x09: case 0x11: case 0x12: used = 8; break;
    case 0x10: used = 4; break;
    case 0x07: used = 12; break;
    case 0x08: used = 1; break;
    case 0x06: case 0x0A: case 0x7F: case 0xFF: used = 0; break;
    case 0x13: used = 16; break;
    case 0x02: case 0x0D: case 0x0E:
        if (avail < 4) return -1;
        used = 4 + (size_t)(uint32_t)rd_i32(q);
        break;
    case 0x03: case 0x04: case 0x0F:
        if (avail < 4) return -1;
        used = (size_t)(uint32_t)rd_i32(q);
        break;
    case 0x05:
        if (avail < 4) return -1;
        used = 5 + (size_t)(uint32_t)rd_i32(q);
        break;
    case 0x0B: { /* regex: two C strings */
        Py_ssize_t a = cstr_len(q, q + avail);
        if (a < 0) return -1;
        Py_ssize_t b = cstr_len(q + a + 1, q + avail);
        if (b < 0) return -1;
        used = (size_t)(a + b + 2);
        break;
    }
    case 0x0C: /* DBPointer: string + 12 bytes */
        if (avail < 4) return -1;
        used = 4 + (size_t)(uint32_t)rd_i32(q) + 12;
        break;
    default:
        return -1;
    }
    return used > avail ? -1 : (Py_ssize_t)used;
}

/* The canonical _id text (what canonical_id gives) for ObjectId, string and integer _ids. */
static PyObject *canonical_id(const uint8_t *p, size_t n) {
    const uint8_t *end = p + n - 1, *q = p + 4;
    while (q < end) {
        uint8_t t = *q++;
        Py_ssize_t klen = cstr_len(q, end);
        if (klen < 0) return NULL;
        const uint8_t *key = q;
        q += klen + 1;
        size_t avail = (size_t)(end - q);
        if (klen == 3 && memcmp(key, "_id", 3) == 0) {
            if (t == 0x07 && avail >= 12) {
                char hex[24];
                for (int i = 0; i < 12; i++) {
                    hex[2 * i] = HEX[q[i] >> 4];
                    hex[2 * i + 1] = HEX[q[i] & 15];
                }
                return PyUnicode_FromStringAndSize(hex, 24);
            }
            if (t == 0x02 && avail >= 5) {
                int32_t len = rd_i32(q);
                if (len < 1 || (size_t)len > avail - 4 || q[4 + len - 1] != 0) return NULL;
                if (memchr(q + 4, 0, (size_t)len - 1) != NULL) return NULL;
                PyObject *s = PyUnicode_DecodeUTF8((const char *)q + 4, len - 1, NULL);
                if (s == NULL) PyErr_Clear();
                return s;
            }
            if (t == 0x10 && avail >= 4) return PyUnicode_FromFormat("%d", (int)rd_i32(q));
            if (t == 0x12 && avail >= 8)
                return PyUnicode_FromFormat("%lld", (long long)(int64_t)rd_u64(q));
            return NULL;
        }
        /* not the _id: skip the element by its size */
        Py_ssize_t used = value_size(t, q, avail);
        if (used < 0) return NULL;
        q += used;
    }
    return NULL;
}

static PyObject *convert(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf;
    size_t n = (size_t)view.len;
    PyObject *result = NULL;
    if (n < 5 || (size_t)rd_i32(p) != n || p[n - 1] != 0) goto fallback;
    PyObject *id = canonical_id(p, n);
    if (id == NULL) {
        if (PyErr_Occurred()) goto done;
        goto fallback;
    }
    buf_t b = {NULL, 0, 0};
    if (buf_grow(&b, n + n / 2 + 64) < 0) {
        Py_DECREF(id);
        PyErr_NoMemory();
        goto done;
    }
    int rc = put_document(&b, p, n, 0, 0);
    if (rc == OK) {
        PyObject *json = PyBytes_FromStringAndSize(b.data, (Py_ssize_t)b.len);
        if (json != NULL) result = PyTuple_Pack(2, id, json);
        Py_XDECREF(json);
    } else if (rc == NOMEM) {
        PyErr_NoMemory();
    }
    PyMem_Free(b.data);
    Py_DECREF(id);
    if (rc == FALLBACK) goto fallback;
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return result;
}

/* document(raw) -> JSON bytes | None: the JSON convert() writes, without looking for an _id. */
static PyObject *document(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf;
    size_t n = (size_t)view.len;
    PyObject *result = NULL;
    buf_t b = {NULL, 0, 0};
    int rc = FALLBACK;
    if (n >= 5 && (size_t)rd_i32(p) == n && p[n - 1] == 0) {
        if (buf_grow(&b, n + n / 2 + 64) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        rc = put_document(&b, p, n, 0, 0);
    }
    if (rc == OK) {
        result = PyBytes_FromStringAndSize(b.data, (Py_ssize_t)b.len);
    } else if (rc == NOMEM) {
        PyErr_NoMemory();
    } else {
        result = Py_NewRef(Py_None);
    }
done:
    PyMem_Free(b.data);
    PyBuffer_Release(&view);
    return result;
}

/* split_event(raw) -> (envelope, fullDocument, fullDocumentBeforeChange) | None
 * The event without its document fields (BSON, to decode), and those fields' BSON documents
 * (None when absent or not a document). None when the BSON is malformed. */
static PyObject *split_event(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf;
    size_t n = (size_t)view.len;
    PyObject *result = NULL;
    const uint8_t *docs[2] = {NULL, NULL};
    size_t sizes[2] = {0, 0};
    buf_t b = {NULL, 0, 0};
    if (n < 5 || (size_t)rd_i32(p) != n || p[n - 1] != 0) goto fallback;
    if (buf_grow(&b, n) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    b.len = 4;
    const uint8_t *end = p + n - 1, *q = p + 4;
    while (q < end) {
        const uint8_t *element = q;
        uint8_t t = *q++;
        Py_ssize_t klen = cstr_len(q, end);
        if (klen < 0) goto fallback;
        const uint8_t *key = q;
        q += klen + 1;
        Py_ssize_t used = value_size(t, q, (size_t)(end - q));
        if (used < 0) goto fallback;
        int slot = -1;
        if (klen == 12 && memcmp(key, "fullDocument", 12) == 0) slot = 0;
        else if (klen == 24 && memcmp(key, "fullDocumentBeforeChange", 24) == 0) slot = 1;
        if (slot >= 0 && t == 0x03) {
            docs[slot] = q;
            sizes[slot] = (size_t)used;
        } else if (slot < 0 || t != 0x0A) { /* a null document field is simply absent */
            memcpy(b.data + b.len, element, (size_t)(q + used - element));
            b.len += (size_t)(q + used - element);
        }
        q += used;
    }
    if (q != end) goto fallback;
    b.data[b.len++] = 0;
    b.data[0] = (char)(b.len & 0xFF);
    b.data[1] = (char)((b.len >> 8) & 0xFF);
    b.data[2] = (char)((b.len >> 16) & 0xFF);
    b.data[3] = (char)((b.len >> 24) & 0xFF);
    {
        PyObject *env = PyBytes_FromStringAndSize(b.data, (Py_ssize_t)b.len);
        PyObject *full = docs[0] ? PyBytes_FromStringAndSize((const char *)docs[0], (Py_ssize_t)sizes[0])
                                 : Py_NewRef(Py_None);
        PyObject *before = docs[1]
                               ? PyBytes_FromStringAndSize((const char *)docs[1], (Py_ssize_t)sizes[1])
                               : Py_NewRef(Py_None);
        if (env && full && before) result = PyTuple_Pack(3, env, full, before);
        Py_XDECREF(env);
        Py_XDECREF(full);
        Py_XDECREF(before);
    }
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(b.data);
    PyBuffer_Release(&view);
    return result;
}

/* The canonical _id text of convert() written into b (UTF-8), for ObjectId, string (valid
 * UTF-8, no NUL) and integer _ids; FALLBACK for any other _id or none. */
static int put_id(buf_t *b, const uint8_t *p, size_t n) {
    const uint8_t *end = p + n - 1, *q = p + 4;
    while (q < end) {
        uint8_t t = *q++;
        Py_ssize_t klen = cstr_len(q, end);
        if (klen < 0) return FALLBACK;
        const uint8_t *key = q;
        q += klen + 1;
        size_t avail = (size_t)(end - q);
        if (klen == 3 && memcmp(key, "_id", 3) == 0) {
            if (t == 0x07 && avail >= 12) return put_hex(b, q, 12);
            if (t == 0x02 && avail >= 5) {
                int32_t len = rd_i32(q);
                if (len < 1 || (size_t)len > avail - 4 || q[4 + len - 1] != 0) return FALLBACK;
                const uint8_t *s = q + 4;
                size_t slen = (size_t)len - 1, i = 0;
                while (i < slen) {
                    if (s[i] == 0) return FALLBACK;
                    if (s[i] < 0x80) {
                        i++;
                    } else if (!utf8_ok(s, slen, &i)) {
                        return FALLBACK;
                    }
                }
                return buf_put(b, (const char *)s, slen) < 0 ? NOMEM : OK;
            }
            char out[24];
            int k;
            if (t == 0x10 && avail >= 4) k = snprintf(out, sizeof out, "%d", (int)rd_i32(q));
            else if (t == 0x12 && avail >= 8)
                k = snprintf(out, sizeof out, "%lld", (long long)(int64_t)rd_u64(q));
            else return FALLBACK;
            return buf_put(b, out, (size_t)k) < 0 ? NOMEM : OK;
        }
        Py_ssize_t used = value_size(t, q, avail);
        if (used < 0) return FALLBACK;
        q += used;
    }
    return FALLBACK;
}

static inline void wr_be32(char *at, uint32_t v) {
    at[0] = (char)(v >> 24);
    at[1] = (char)(v >> 16);
    at[2] = (char)(v >> 8);
    at[3] = (char)v;
}

/* copy_rows(docs, tail, max_bytes) -> (data, rows, rest)
 *
 * A snapshot page as rows of PostgreSQL's binary COPY format (no header or trailer: pages
 * join into one COPY): for each document (a bytes-like BSON document) that convert() would
 * take and whose JSON is at most max_bytes long, one row of six fields: the canonical _id
 * (text), the document (jsonb: version 1, then the JSON convert() writes), then `tail` as it
 * is (the other fields, the same for every row of the page, already in COPY's field format).
 * The JSON is written once, into the COPY data; no Python object is made per document.
 * (The walk keeps the GIL: doubles are written by PyOS_double_to_string.) `rest` lists the indexes of the documents left to the Python conversion (those
 * convert() returns None for, and oversized ones), in order. */
static int copy_row(buf_t *b, const uint8_t *p, size_t n, const char *tail, size_t tail_len,
                    size_t max_bytes) {
    if (n < 5 || (size_t)rd_i32(p) != n || p[n - 1] != 0) return FALLBACK;
    if (buf_grow(b, 6) < 0) return NOMEM;
    b->data[b->len++] = 0;
    b->data[b->len++] = 6; /* fields */
    size_t id_at = b->len;
    b->len += 4;
    int rc = put_id(b, p, n);
    if (rc != OK) return rc;
    wr_be32(b->data + id_at, (uint32_t)(b->len - id_at - 4));
    if (buf_grow(b, n + n / 2 + 64 + tail_len) < 0) return NOMEM;
    size_t doc_at = b->len;
    b->len += 4;
    b->data[b->len++] = 1; /* jsonb version */
    rc = put_document(b, p, n, 0, 0);
    if (rc != OK) return rc;
    size_t json = b->len - doc_at - 5;
    if (json > max_bytes) return FALLBACK;
    wr_be32(b->data + doc_at, (uint32_t)(json + 1));
    return buf_put(b, tail, tail_len) < 0 ? NOMEM : OK;
}

static PyObject *copy_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *docs;
    Py_buffer tail;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "Oy*n:copy_rows", &docs, &tail, &max_bytes)) return NULL;
    PyObject *result = NULL, *rest = NULL;
    PyObject *seq = PySequence_Fast(docs, "copy_rows: docs must be a sequence");
    Py_buffer *views = NULL;
    char *status = NULL;
    Py_ssize_t count = 0, held = 0, rows = 0;
    buf_t b = {NULL, 0, 0};
    int failed = 0;
    if (seq == NULL) goto done;
    count = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_Calloc((size_t)count + 1, sizeof(Py_buffer));
    status = PyMem_Calloc((size_t)count + 1, 1);
    if (views == NULL || status == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (; held < count; held++)
        if (PyObject_GetBuffer(items[held], &views[held], PyBUF_SIMPLE) < 0) goto done;
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        size_t mark = b.len;
        int rc = copy_row(&b, views[i].buf, (size_t)views[i].len, tail.buf, (size_t)tail.len,
                          (size_t)max_bytes);
        if (rc == NOMEM) failed = 1;
        else if (rc == OK) rows++;
        else {
            b.len = mark; /* the row comes apart: to Python */
            status[i] = 1;
        }
    }
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    rest = PyList_New(0);
    if (rest == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!status[i]) continue;
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || PyList_Append(rest, index) < 0) {
            Py_XDECREF(index);
            goto done;
        }
        Py_DECREF(index);
    }
    {
        PyObject *data = PyBytes_FromStringAndSize(b.data ? b.data : "", (Py_ssize_t)b.len);
        if (data != NULL) result = Py_BuildValue("(NnO)", data, rows, rest);
    }
done:
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(status);
    PyMem_Free(b.data);
    Py_XDECREF(rest);
    Py_XDECREF(seq);
    PyBuffer_Release(&tail);
    return result;
}

/* documents(array) -> [bytes, ...] | None
 * The documents of a BSON array (a cursor reply's batch) as their own BSON bytes, in order;
 * elements that are not documents are skipped. None when the array does not frame exactly. */
static PyObject *documents(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf;
    size_t n = (size_t)view.len;
    PyObject *out = PyList_New(0);
    if (out == NULL) goto done;
    if (n < 5 || (size_t)rd_i32(p) != n || p[n - 1] != 0) goto fallback;
    const uint8_t *end = p + n - 1, *q = p + 4;
    while (q < end) {
        uint8_t t = *q++;
        Py_ssize_t klen = cstr_len(q, end);
        if (klen < 0) goto fallback;
        q += klen + 1;
        Py_ssize_t used = value_size(t, q, (size_t)(end - q));
        if (used < 0) goto fallback;
        if (t == 0x03) {
            PyObject *doc = PyBytes_FromStringAndSize((const char *)q, used);
            if (doc == NULL || PyList_Append(out, doc) < 0) {
                Py_XDECREF(doc);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(doc);
        }
        q += used;
    }
    if (q == end) goto done;
fallback:
    Py_XDECREF(out);
    out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"documents", documents, METH_O,
     "documents(array) -> [bytes, ...] | None: the documents of a BSON array as their own "
     "BSON, in order (other elements skipped); None when the array does not frame exactly."},
    {"copy_rows", copy_rows, METH_VARARGS,
     "copy_rows(docs, tail, max_bytes) -> (data, rows, rest): a page of BSON documents as "
     "PostgreSQL binary COPY rows (_id, jsonb document, then tail); rest: the indexes left to "
     "the Python conversion."},
    {"split_event", split_event, METH_O,
     "split_event(raw) -> (envelope, fullDocument, fullDocumentBeforeChange) | None: a change "
     "event's BSON without its documents, and the documents' BSON."},
    {"document", document, METH_O,
     "document(raw) -> JSON bytes | None: BSON bytes to the landing JSON (no _id needed), or "
     "None when the Python conversion must decide."},
    {"convert", convert, METH_O,
     "convert(raw) -> (canonical _id, JSON bytes) | None: BSON bytes to the landing JSON, or "
     "None when the Python conversion must decide."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bsonjson",
    "BSON bytes to the raw landing contract's JSON (the fast path of documents.document_json).",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__bsonjson(void) { return PyModuleDef_Init(&module); }
