# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled sans-I/O core of the Event Socket protocol (twin of ``_parser_py``).

The stream is framed directly on a C buffer: the search for the blank line that
ends a header block resumes where the previous ``feed()`` stopped, so a frame that
trickles in byte by byte is still scanned once. A plain event keeps one ``bytes``
object (its outer body); framing it finds, 64 bytes at a time, where its header
lines end, its inner Content-Length and the lines routing reads. The C array of
line offsets is built by the first read of any other header; a header value is
URL-decoded only when it is read, and repeated header names share one interned
``str`` through a small hash cache. That is what makes routing an event (reading
Event-Name and Unique-ID) cost well under a microsecond instead of the tens of
microseconds a line-by-line ``unquote`` parser pays.

Everything an ``ESLEvent`` points into is a ``bytes`` object it owns a reference
to; nothing points into the parser's buffer, which moves as data arrives.
"""

from collections.abc import Iterable, KeysView, Mapping, MutableMapping
import json

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_Append, PyList_AsTuple
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR
cimport cython
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from genesis.exceptions import ProtocolError

cdef extern from *:
    void __builtin_prefetch(const void* addr) noexcept nogil

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>

    /* Bit k set: p[k] is a line feed, for k in 0..63. */
    static inline unsigned long long genesis_lf64(const char* p) {
        const __m128i lf = _mm_set1_epi8(10);
        return (unsigned long long)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                   _mm_loadu_si128((const __m128i*)p), lf))
             | (unsigned long long)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                   _mm_loadu_si128((const __m128i*)(p + 16)), lf)) << 16
             | (unsigned long long)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                   _mm_loadu_si128((const __m128i*)(p + 32)), lf)) << 32
             | (unsigned long long)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                   _mm_loadu_si128((const __m128i*)(p + 48)), lf)) << 48;
    }
    #endif

    /* What framing a plain event's inner block needs, found in one pass: where
       the header lines end and the body starts, and the first line (and up to
       two occurrences) of each name that framing or routing reads. */
    typedef struct {
        Py_ssize_t head;   /* start of the blank line; -1: none in the payload */
        Py_ssize_t body;   /* first byte after the blank line */
        Py_ssize_t cl, en, sub, uid;     /* line starts, -1: absent */
        int cl_n, en_n, sub_n, uid_n;    /* occurrences, counted up to 2 */
    } genesis_block;

    static inline void genesis_note(Py_ssize_t s, Py_ssize_t* pos, int* n) {
        if (*n == 0) *pos = s;
        if (*n < 2) *n += 1;
    }

    /* Classify the line starting at s; 1 when it is the blank line. */
    static inline int genesis_line(const char* p, Py_ssize_t s, Py_ssize_t n,
                                   genesis_block* b) {
        Py_ssize_t left = n - s;
        switch (p[s]) {
        case 10:  /* LF */
            b->head = s; b->body = s + 1; return 1;
        case 13:  /* CR */
            if (left >= 2 && p[s + 1] == 10) { b->head = s; b->body = s + 2; return 1; }
            return 0;
        case 'C':
            if (left >= 15 && memcmp(p + s, "Content-Length:", 15) == 0)
                genesis_note(s, &b->cl, &b->cl_n);
            return 0;
        case 'E':
            if (left >= 11 && memcmp(p + s, "Event-Name:", 11) == 0)
                genesis_note(s, &b->en, &b->en_n);
            else if (left >= 15 && memcmp(p + s, "Event-Subclass:", 15) == 0)
                genesis_note(s, &b->sub, &b->sub_n);
            return 0;
        case 'U':
            if (left >= 10 && memcmp(p + s, "Unique-ID:", 10) == 0)
                genesis_note(s, &b->uid, &b->uid_n);
            return 0;
        }
        return 0;
    }

    /* A call per line (memchr) costs more than the line's bytes: 64 bytes are
       compared at once and only the line feeds found are looked at. */
    static void genesis_scan_block(const char* p, Py_ssize_t n, genesis_block* b) {
        Py_ssize_t i = 0, j;
        const char* q;
        b->head = -1; b->body = -1;
        b->cl = b->en = b->sub = b->uid = -1;
        b->cl_n = b->en_n = b->sub_n = b->uid_n = 0;
        if (n == 0 || genesis_line(p, 0, n, b)) return;
    #if defined(__SSE2__)
        while (i + 64 <= n) {
            unsigned long long m = genesis_lf64(p + i);
            while (m) {
                j = i + __builtin_ctzll(m) + 1;
                m &= m - 1;
                if (j < n && genesis_line(p, j, n, b)) return;
            }
            i += 64;
        }
    #endif
        while (i < n && (q = (const char*)memchr(p + i, 10, n - i)) != NULL) {
            j = q - p + 1;
            if (j < n && genesis_line(p, j, n, b)) return;
            i = j;
        }
    }

    /* The type of the first member (the hash) of each cache slot: it aligns the slots
       to cache lines, so that a 64-byte slot takes one line and a 128-byte slot two.
       Unaligned, they straddle one more line, and the arrays happened to start mid-line. */
    #if defined(__GNUC__)
    typedef uint64_t genesis_slot_hash __attribute__((aligned(64)));
    #else
    typedef uint64_t genesis_slot_hash;
    #endif

    /* The line feeds of p[from:stop), one after another, where every line is known to
       end with one before stop (a header block that framing has found complete).
       64 bytes are compared at once and only the line feeds found are looked at. */
    typedef struct {
        unsigned long long m;   /* line feeds of the 64 bytes at base not yet handed out */
        Py_ssize_t base, next;  /* next: the first byte not yet compared */
    } genesis_lines;

    static inline void genesis_lines_start(genesis_lines* st, Py_ssize_t from) {
        st->m = 0; st->base = from; st->next = from;
    }

    static inline Py_ssize_t genesis_next_lf(const char* p, genesis_lines* st, Py_ssize_t stop) {
        Py_ssize_t le;
    #if defined(__SSE2__)
        while (!st->m && st->next + 64 <= stop) {
            st->m = genesis_lf64(p + st->next);
            st->base = st->next;
            st->next += 64;
        }
        if (st->m) {
            le = st->base + __builtin_ctzll(st->m);
            st->m &= st->m - 1;
            return le;
        }
    #endif
        le = (const char*)memchr(p + st->next, 10, stop - st->next) - p;
        st->next = le + 1;
        return le;
    }

    /* memcmp(a, b, n) == 0 for the strings the caches confirm (names, values, whole
       lines), without a call. Overlapping windows, OR-ed together and tested once:
       the lengths of consecutive header names, values and lines vary at random, so
       a compare that stops at the first difference, or a loop per byte, would
       mispredict on nearly every line. From 16 bytes on, 16 are compared at once:
       the loop makes at most five rounds (a cached line is at most 96 bytes). A loop
       of six windows placed without a branch ran 2k more instructions per
       dict(event), and was no faster. */
    #if defined(__GNUC__)
    #define GENESIS_ALWAYS_INLINE static inline __attribute__((always_inline))
    #else
    #define GENESIS_ALWAYS_INLINE static inline
    #endif
    GENESIS_ALWAYS_INLINE int genesis_same(const char* a, const char* b, Py_ssize_t n) {
        uint64_t x, y;
        uint32_t u, v;
    #if defined(__SSE2__)
        if (n >= 16) {
            __m128i d = _mm_xor_si128(_mm_loadu_si128((const __m128i*)(a + n - 16)),
                                      _mm_loadu_si128((const __m128i*)(b + n - 16)));
            Py_ssize_t i;
            for (i = 0; i < n - 16; i += 16)
                d = _mm_or_si128(d, _mm_xor_si128(_mm_loadu_si128((const __m128i*)(a + i)),
                                                  _mm_loadu_si128((const __m128i*)(b + i))));
            return _mm_movemask_epi8(_mm_cmpeq_epi8(d, _mm_setzero_si128())) == 0xFFFF;
        }
    #else
        if (n >= 16) return memcmp(a, b, n) == 0;
    #endif
        if (n >= 8) {
            memcpy(&x, a, 8); memcpy(&y, b, 8);
            uint64_t d = x ^ y;
            memcpy(&x, a + n - 8, 8); memcpy(&y, b + n - 8, 8);
            return (d | (x ^ y)) == 0;
        }
        if (n >= 4) {
            memcpy(&u, a, 4); memcpy(&v, b, 4);
            uint32_t d = u ^ v;
            memcpy(&u, a + n - 4, 4); memcpy(&v, b + n - 4, 4);
            return (d | (u ^ v)) == 0;
        }
        while (n-- > 0)
            if (a[n] != b[n]) return 0;
        return 1;
    }

    /* The first ':' in p[s:ve), or NULL; p[s:stop) may be read. Header names are short,
       so the colon is nearly always in the first 32 bytes: one test, no call. (16 bytes
       at a time took 1.8 rounds per line of the corpus: Caller-Caller-ID-Number,
       variable_...) */
    static inline const char* genesis_colon(const char* p, Py_ssize_t s, Py_ssize_t ve,
                                            Py_ssize_t stop) {
    #if defined(__SSE2__)
        const __m128i colon = _mm_set1_epi8(58);
        unsigned m;
        while (s < ve && s + 32 <= stop) {
            m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                    _mm_loadu_si128((const __m128i*)(p + s)), colon))
              | (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                    _mm_loadu_si128((const __m128i*)(p + s + 16)), colon)) << 16;
            if (m) {
                s += __builtin_ctz(m);
                return s < ve ? p + s : NULL;
            }
            s += 32;
        }
    #endif
        return s < ve ? (const char*)memchr(p + s, 58, ve - s) : NULL;
    }

    /* Split the header line p[s:ve) (p[s:stop) may be read): the length of its name,
       with *vs where its value starts (one space after the colon dropped). -1: the line
       has no colon; -2: it is an inner Content-Length line, framing and no header. */
    static inline Py_ssize_t genesis_split_line(const char* p, Py_ssize_t s, Py_ssize_t ve,
                                                Py_ssize_t stop, Py_ssize_t* vs) {
        const char* c = genesis_colon(p, s, ve, stop);
        Py_ssize_t colon;
        if (c == NULL) return -1;
        colon = c - p;
        if (colon - s == 14 && memcmp(p + s, "Content-Length", 14) == 0) return -2;
        *vs = colon + 1;
        if (*vs < ve && p[*vs] == 32) (*vs)++;
        return colon - s;
    }

    /* Index the header lines of p[*pos:stop) (each ends with LF before stop) into
       lines[*cnt:cap], four uint32 per line: name start, name length, value
       start, value length (one CR before the LF and one space after the colon
       dropped). Content-Length lines (inner framing) are skipped. Returns 0 when
       done, 1 when lines is full (call again from *pos), -1 when the line at
       *pos has no colon. */
    static int genesis_index(const char* p, Py_ssize_t* pos, Py_ssize_t stop,
                             uint32_t* lines, Py_ssize_t* cnt, Py_ssize_t cap) {
        Py_ssize_t s = *pos, n = *cnt, le, ve, vs = 0, nl;
        genesis_lines scan;
        uint32_t* u;
        genesis_lines_start(&scan, s);
        while (s < stop) {
            le = genesis_next_lf(p, &scan, stop);
            ve = (le > s && p[le - 1] == 13) ? le - 1 : le;
            nl = genesis_split_line(p, s, ve, stop, &vs);
            if (nl == -1) { *pos = s; *cnt = n; return -1; }
            if (nl == -2) {
                s = le + 1;
                continue;
            }
            if (n == cap) { *pos = s; *cnt = n; return 1; }
            u = lines + 4 * n;
            u[0] = (uint32_t)s;
            u[1] = (uint32_t)nl;
            u[2] = (uint32_t)vs;
            u[3] = (uint32_t)(ve - vs);
            n++;
            s = le + 1;
        }
        *pos = s;
        *cnt = n;
        return 0;
    }

    /* Copy the 16 bytes at src to dst; how many come before the first '%' (16: none). */
    static inline int genesis_copy_to_percent(const char* src, char* dst) {
    #if defined(__SSE2__)
        __m128i v = _mm_loadu_si128((const __m128i*)src);
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(37)));
        _mm_storeu_si128((__m128i*)dst, v);
        return m ? __builtin_ctz(m) : 16;
    #else
        int k = 0;
        memcpy(dst, src, 16);
        while (k < 16 && src[k] != 37) k++;
        return k;
    #endif
    }
    """
    ctypedef struct genesis_block:
        Py_ssize_t head, body, cl, en, sub, uid
        int cl_n, en_n, sub_n, uid_n
    void genesis_scan_block(const char* p, Py_ssize_t n, genesis_block* b) noexcept nogil
    int genesis_index(const char* p, Py_ssize_t* pos, Py_ssize_t stop, uint32_t* lines,
                      Py_ssize_t* cnt, Py_ssize_t cap) noexcept nogil
    int genesis_copy_to_percent(const char* src, char* dst) noexcept nogil
    ctypedef struct genesis_lines:
        pass
    ctypedef uint64_t genesis_slot_hash
    void genesis_lines_start(genesis_lines* st, Py_ssize_t start) noexcept nogil
    Py_ssize_t genesis_next_lf(const char* p, genesis_lines* st, Py_ssize_t stop) noexcept nogil
    Py_ssize_t genesis_split_line(const char* p, Py_ssize_t s, Py_ssize_t ve, Py_ssize_t stop,
                                  Py_ssize_t* vs) noexcept nogil
    bint _same "genesis_same"(const char* a, const char* b, Py_ssize_t n) noexcept nogil

cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)
    PyObject* PyDict_SetDefault(object d, object key, object default) except NULL
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    void PyUnicode_InternInPlace(PyObject** p)
    Py_ssize_t Py_REFCNT(PyObject* o)
    PyObject* PyList_GET_ITEM(object lst, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(object lst)
    PyTypeObject* Py_TYPE(PyObject* o)

KIND_AUTH_REQUEST = 1
KIND_COMMAND_REPLY = 2
KIND_API_RESPONSE = 3
KIND_EVENT = 4
KIND_LOG = 5
KIND_DISCONNECT_NOTICE = 6
KIND_RUDE_REJECTION = 7
KIND_UNKNOWN = 8

cdef enum:
    _K_AUTH = 1
    _K_REPLY = 2
    _K_API = 3
    _K_EVENT = 4
    _K_LOG = 5
    _K_NOTICE = 6
    _K_RUDE = 7
    _K_UNKNOWN = 8
    # Sub-formats of KIND_EVENT (how the outer body is laid out).
    _F_NONE = 0
    _F_PLAIN = 1
    _F_JSON = 2
    _F_XML = 3
    # Each header line is four uint32: name start, name length, value start, value length.
    _SLOT = 4
    # Set in a line's value length once its header has been counted in ``decoded``.
    _SEEN = 0x80000000
    _LEN_MASK = 0x7FFFFFFF
    _EXCERPT = 64
    # Longer header names are decoded every time rather than cached: a hostile peer
    # must not be able to pin large strings in the process-wide cache.
    _NAME_CACHE_MAX_LEN = 64
    _NAME_CACHE_SIZE = 2048
    _NAME_CACHE_PROBE = 8
    # With these bytes a _NameSlot is 64 bytes, one cache line.
    _NAME_INLINE = 44
    # 40 bytes hold a UUID (36); with the hash and the str pointer a slot is 64 bytes.
    _VALUE_CACHE_MAX_LEN = 40
    _VALUE_CACHE_SIZE = 4096
    # How many lines ahead ESLEvent._list prefetches cache slots, and the size of
    # its ring of hashes (more than _AHEAD: a line's entry must outlive the
    # prefetch issued for the line _AHEAD after it; a power of two, indexed by a mask).
    _AHEAD = 4
    _RING = 8
    # A _LineSlot is 128 bytes, two cache lines; lines this long or shorter are cached
    # (99% of the corpus's header lines), with their line feed.
    _LINE_INLINE = 95
    # Words of a pass's _met bitmap: one bit per name cache slot.
    _MET_WORDS = _NAME_CACHE_SIZE // 64
    _LINE_CACHE_SIZE = 4096
    # Cells a header block's pass starts with (names; it grows by doubling).
    _CELLS = 96
    # Arrays of _CELLS cells kept for reuse (at most 96 KiB).
    _SPARE_CELLS = 64

# Marks "no value" where None is a legitimate default.
_MISSING = object()
_ARRAY_PREFIX = "ARRAY::"
_ARRAY_SEP = "|:"


# ---------------------------------------------------------------------------
# Decoding helpers
# ---------------------------------------------------------------------------

cdef struct _NameSlot:
    genesis_slot_hash hash
    PyObject* text
    uint32_t length
    # A name this short is confirmed here, in the slot's cache line, without
    # reading the str object: a hit then costs one memory access, not two.
    char raw[_NAME_INLINE]

cdef _NameSlot _name_cache[_NAME_CACHE_SIZE]


cdef inline bint _met(uint64_t* met, Py_ssize_t slot) noexcept nogil:
    """Mark name cache slot ``slot`` in a pass's bitmap; whether it was marked already.

    A pass over one message's lines tells a repeated header name by its slot (a slot
    holds one name for the life of the process). The bitmap (``_MET_WORDS`` words) is
    the pass's own, on its stack and cleared when it starts: a collection that one of
    the pass's allocations starts may run a finalizer that makes a pass over another
    message, and marks kept in the shared cache would then be that pass's.
    """
    cdef uint64_t bit = (<uint64_t>1) << (slot & 63)
    cdef uint64_t* word = &met[slot >> 6]
    if word[0] & bit:
        return True
    word[0] |= bit
    return False


cdef inline uint32_t _load4(const char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _load8(const char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint64_t _hash_name(const char* p, Py_ssize_t n) noexcept nogil:
    """A cheap hash of a header name or value: its length and a few 8-byte windows
    (two overlapping 4-byte ones below 8 bytes).

    Header names share long prefixes (``Caller-Channel-...``) but differ in
    length or near the end; a byte-serial hash would cost more than the decoding
    it saves. Each window is multiplied by its own constant and the products are
    XOR-ed, so the multiplications run side by side instead of one after another.
    Collisions only cost a probe: every hit is confirmed by comparing the bytes.

    The cache slot is ``h & (size - 1)``. A product's low bits depend only on the
    low bits of its window, its top bits on all of them, so the top 12 bits are
    folded onto the low ones: two instructions where a multiplying mix took eight
    (the hash runs twice per header line of every ``dict(event)``), and on the
    corpus values it misses the caches less often than that mix did (the top bits
    alone, a rotation, missed the value cache 1.7 times as often). The top bit is
    set so that no hash is 0, the hash of a free slot: a match needs no other test.
    """
    cdef uint64_t h = <uint64_t>n * 0x9E3779B97F4A7C15ULL
    if n >= 8:
        h ^= (_load8(p) * 0xBF58476D1CE4E5B9ULL
              ^ _load8(p + (n >> 1) - 4) * 0x94D049BB133111EBULL
              ^ _load8(p + n - 8) * 0xD6E8FEB86659FD93ULL)
        if n > 24:
            # Values up to 40 bytes are cached (UUIDs): two more windows cover them.
            h ^= (_load8(p + 8) * 0xC2B2AE3D27D4EB4FULL
                  ^ _load8(p + n - 16) * 0x165667B19E3779F9ULL)
    elif n >= 4:
        # Two overlapping 4-byte windows hold every byte of a short value ("true", "8000").
        h ^= (<uint64_t>_load4(p) | (<uint64_t>_load4(p + n - 4) << 32)) * 0xBF58476D1CE4E5B9ULL
    elif n > 0:
        h ^= (<uint64_t><unsigned char>p[0] | (<uint64_t><unsigned char>p[n >> 1] << 8)
              | (<uint64_t><unsigned char>p[n - 1] << 16)) * 0xBF58476D1CE4E5B9ULL
    return (h ^ (h >> 52)) | 0x8000000000000000ULL


cdef inline str _decode_bytes(const char* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(p, n, "surrogateescape")


cdef inline str _name_str(const char* p, Py_ssize_t n):
    """The header name at ``p`` as a str, shared across events through the cache."""
    cdef Py_ssize_t slot
    return _name_at(p, n, &slot)


cdef inline str _name_at(const char* p, Py_ssize_t n, Py_ssize_t* slot_out):
    """``_name_str``, also telling the cache slot holding the name (-1: not cached).

    A slot, once filled, holds the same name for the life of the process, so two
    lines with the same slot carry the same name: that is how an event tells in
    O(1) per line that none of its names repeats.
    """
    return _name_hashed(p, n, _hash_name(p, n), slot_out)


cdef str _name_hashed(const char* p, Py_ssize_t n, uint64_t h, Py_ssize_t* slot_out):
    """``_name_at`` with the name's ``_hash_name`` already computed."""
    cdef Py_ssize_t slot = _name_slot(p, n, h)
    slot_out[0] = slot
    if slot >= 0:
        return <str>_name_cache[slot].text
    return _decode_bytes(p, n)


cdef inline Py_ssize_t _name_slot(const char* p, Py_ssize_t n, uint64_t h) except -2:
    """The name cache slot holding the name at ``p`` (filled if need be), or -1.

    The common case, a short name found at its first probe, is answered inline: a
    pass over an event asks once per line, and the call cost as much as the check.
    """
    cdef Py_ssize_t slot = <Py_ssize_t>(h & (_NAME_CACHE_SIZE - 1))
    cdef _NameSlot* e = &_name_cache[slot]
    # A free slot has hash 0, which no name hashes to: only a filled slot answers.
    if e.hash == h and e.length == n and n <= _NAME_INLINE and _same(e.raw, p, n):
        return slot
    return _name_probe(p, n, h)


cdef Py_ssize_t _name_probe(const char* p, Py_ssize_t n, uint64_t h) except -2:
    """``_name_slot`` the long way: every probe, and filling a free slot.

    -1 means the name is not cached: too long, not valid UTF-8, or its probe
    sequence is full. The caller reads the str from the slot itself, so a hit
    touches nothing but the slot.
    """
    cdef Py_ssize_t i, slot
    cdef _NameSlot* e
    cdef str text
    cdef PyObject* obj
    cdef const char* utf8
    cdef Py_ssize_t ulen
    if n > _NAME_CACHE_MAX_LEN:
        return -1
    for i in range(_NAME_CACHE_PROBE):
        slot = <Py_ssize_t>((h + <uint64_t>i) & (_NAME_CACHE_SIZE - 1))
        e = &_name_cache[slot]
        if e.text == NULL:
            text = _decode_bytes(p, n)
            try:
                utf8 = PyUnicode_AsUTF8AndSize(text, &ulen)
            except UnicodeEncodeError:
                # A name carrying lone surrogates has no UTF-8 form to compare with.
                return -1
            if ulen != n:
                return -1
            # InternInPlace consumes the reference it is given and may hand back an
            # equal, already interned str: the one it returns is the cache's own.
            Py_INCREF(text)
            obj = <PyObject*>text
            PyUnicode_InternInPlace(&obj)
            e.hash = h
            e.length = <uint32_t>n
            e.text = obj
            memcpy(e.raw, p, n if n < _NAME_INLINE else _NAME_INLINE)
            return slot
        if e.hash == h and e.length == n and (
                _same(e.raw, p, n) if n <= _NAME_INLINE
                else _same(PyUnicode_AsUTF8AndSize(<object>e.text, &ulen), p, n)):
            return slot
    return -1


cdef inline int _hexval(unsigned char c) noexcept nogil:
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 65 and c <= 70:
        return c - 55
    if c >= 97 and c <= 102:
        return c - 87
    return -1


cdef Py_ssize_t _unescape(const char* src, Py_ssize_t n, char* dst) noexcept nogil:
    """URL-decode ``src`` into ``dst`` (at least ``n`` bytes); return the length.

    A ``%`` not followed by two hex digits is kept literally and ``+`` stays ``+``:
    FreeSWITCH's encoder never writes ``+`` for a space, and refusing a stray
    ``%`` would turn one odd header into a dropped connection.
    """
    cdef Py_ssize_t i = 0, o = 0, k
    cdef int hi, lo
    cdef unsigned char c
    while i < n:
        c = <unsigned char>src[i]
        if c != 37 and i + 16 <= n:
            # The bytes up to the next '%' are copied 16 at a time (a byte at a time
            # cost ~900 instructions per dict(event): Event-Date-GMT and the other
            # long values with escapes miss the value cache). dst has room: o <= i.
            k = genesis_copy_to_percent(src + i, dst + o)
            i += k
            o += k
            continue
        if c == 37 and i + 2 < n:
            hi = _hexval(<unsigned char>src[i + 1])
            lo = _hexval(<unsigned char>src[i + 2])
            if hi >= 0 and lo >= 0:
                dst[o] = <char>(hi * 16 + lo)
                o += 1
                i += 3
                continue
        dst[o] = <char>c
        o += 1
        i += 1
    return o


cdef str _url_decode(const char* p, Py_ssize_t n):
    cdef char stack[256]
    cdef char* out
    cdef Py_ssize_t m
    if memchr(p, 37, n) == NULL:
        return PyUnicode_DecodeUTF8(p, n, "surrogateescape")
    if n <= 256:
        m = _unescape(p, n, stack)
        return PyUnicode_DecodeUTF8(stack, m, "surrogateescape")
    out = <char*>PyMem_Malloc(n)
    if out == NULL:
        raise MemoryError()
    try:
        m = _unescape(p, n, out)
        return PyUnicode_DecodeUTF8(out, m, "surrogateescape")
    finally:
        PyMem_Free(out)


cdef struct _ValueSlot:
    genesis_slot_hash hash
    PyObject* text
    Py_ssize_t length
    char raw[_VALUE_CACHE_MAX_LEN]

cdef _ValueSlot _value_cache[_VALUE_CACHE_SIZE]


cdef inline str _value_str(const char* p, Py_ssize_t n):
    """URL-decode a header value, sharing the str of a short one with earlier events."""
    if n > _VALUE_CACHE_MAX_LEN:
        return _url_decode(p, n)
    return _value_hashed(p, n, _hash_name(p, n))


cdef inline str _value_hashed(const char* p, Py_ssize_t n, uint64_t h):
    """``_value_str`` with the value's ``_hash_name`` already computed.

    Almost every value repeats from event to event: tokens (``true``, ``8000``,
    ``CS_EXECUTE``) and the channel UUIDs that every event of a call carries. The
    cache is keyed by the bytes as they are on the wire, so a hit costs neither the
    scan for ``%`` nor an allocation. It is direct-mapped and a miss replaces the
    slot, so one-off values (timestamps, sequence numbers) cycle through it without
    pinning memory, and a hostile peer can only make it miss. A hit is answered
    inline (a pass over an event asks once per line); a miss decodes in
    ``_value_miss``.
    """
    cdef _ValueSlot* e
    if n > _VALUE_CACHE_MAX_LEN:
        return _url_decode(p, n)
    e = &_value_cache[h & (_VALUE_CACHE_SIZE - 1)]
    if e.hash == h and e.length == n and _same(e.raw, p, n):
        return <str>e.text
    return _value_miss(e, p, n, h)


cdef str _value_miss(_ValueSlot* e, const char* p, Py_ssize_t n, uint64_t h):
    """Decode a value the cache slot ``e`` does not hold, and keep it there."""
    cdef str text = _url_decode(p, n)
    Py_INCREF(text)
    Py_XDECREF(e.text)
    e.text = <PyObject*>text
    e.hash = h
    e.length = n
    memcpy(e.raw, p, n)
    return text


cdef struct _LineSlot:
    # A header line as it is on the wire (name, separator, URL-encoded value), with
    # what it decodes to: the str of its value (owned), and its name's _name_cache slot
    # and str (borrowed: a name cache slot lives as long as the process).
    genesis_slot_hash hash
    PyObject* value
    PyObject* text
    uint16_t length
    uint16_t name     # a name cache slot (_NAME_CACHE_SIZE fits 16 bits)
    # The slot of the line that followed this one the last time it was met: lines
    # come in the same order event after event, so that line is tried first, by
    # comparing bytes alone (see _list_block). Always a filled slot.
    uint32_t next
    # The line and its line feed, which a guess by ``next`` compares too: it ends
    # the line there without a search.
    char raw[_LINE_INLINE + 1]

# Whole lines repeat from event to event even more than values do: all but 3% of
# the corpus's plain header lines are byte for byte a line met earlier (the host,
# the call's UUIDs and numbers, states, codecs). Keyed by the line, one probe and
# one compare answer both the name and the value, where the name and value caches
# take two of each and a search for the colon. Direct-mapped like the value cache:
# a one-off line (a timestamp) replaces a slot, a hostile peer can only make it miss.
cdef _LineSlot _line_cache[_LINE_CACHE_SIZE]


cdef inline uint32_t _line_slot(uint64_t h) noexcept nogil:
    """The line cache slot of a line hashed to ``h``."""
    return <uint32_t>(h & (_LINE_CACHE_SIZE - 1))


cdef _LineSlot* _keep_line(const char* p, Py_ssize_t n, uint64_t h, Py_ssize_t name,
                           str value) noexcept:
    """Cache the URL-encoded line ``p[:n]`` (hash ``h``): its name is in slot ``name``
    of the name cache, its value decodes to ``value``. Returns its slot."""
    cdef _LineSlot* e = &_line_cache[_line_slot(h)]
    Py_INCREF(value)
    Py_XDECREF(e.value)
    e.value = <PyObject*>value
    e.hash = h
    e.length = <uint16_t>n
    e.name = <uint16_t>name
    e.text = _name_cache[name].text
    e.next = _line_slot(h)
    memcpy(e.raw, p, n)
    e.raw[n] = 10
    return e


cdef object _split_array(str value):
    """``ARRAY::a|:b`` is FreeSWITCH's multi-valued header: it becomes ``["a", "b"]``."""
    if value.startswith(_ARRAY_PREFIX):
        return value[7:].split(_ARRAY_SEP)
    return value


cdef object _merge(object old, object value):
    """Combine a repeated header: wire order, lists flattened."""
    cdef list merged
    if type(old) is list:
        merged = <list>old
    else:
        merged = [old]
    if type(value) is list:
        merged.extend(<list>value)
    else:
        merged.append(value)
    return merged


cdef inline object _line_value(const char* base, uint32_t* s, bint urlenc):
    """The value of the indexed line ``s``: decoded, an ARRAY:: value split."""
    cdef uint32_t n = s[3] & _LEN_MASK
    return _split_value(_value_str(base + s[2], n) if urlenc else _decode_bytes(base + s[2], n))


cdef inline void _hash_ahead(const char* base, uint32_t* s, Py_ssize_t j, uint64_t* name_h,
                             uint64_t* value_h, bint values) noexcept nogil:
    """Hash line ``j`` (at ``s``) into the rings and prefetch its cache slots.

    A pass over an event's lines runs this ``_AHEAD`` lines before it decodes a
    line: the two cache lookups of a line mostly wait on memory, and the lines of
    one event are independent, so the waits overlap. ``values``: hash and prefetch
    the value too (only URL-encoded values go through the value cache).
    """
    cdef Py_ssize_t vn = s[3] & _LEN_MASK
    name_h[j & (_RING - 1)] = _hash_name(base + s[0], s[1])
    __builtin_prefetch(&_name_cache[name_h[j & (_RING - 1)] & (_NAME_CACHE_SIZE - 1)])
    if values and vn <= _VALUE_CACHE_MAX_LEN:
        value_h[j & (_RING - 1)] = _hash_name(base + s[2], vn)
        __builtin_prefetch(&_value_cache[value_h[j & (_RING - 1)] & (_VALUE_CACHE_SIZE - 1)])


cdef inline object _value_ahead(const char* base, uint32_t* s, bint urlenc, bint hashed,
                                uint64_t h):
    """``_line_value`` of line ``s``, reusing the hash ``_hash_ahead`` took when ``hashed``."""
    cdef uint32_t n = s[3] & _LEN_MASK
    cdef char first
    if hashed and n <= _VALUE_CACHE_MAX_LEN:
        first = base[s[2]] if n else 0
        # Decoding only turns "%41" into "A" and never lengthens: a value that cannot
        # decode to "ARRAY::..." is not looked at again. Each branch returns the call
        # itself: a local holding the str costs 1.2k instructions per event in
        # reference counting (callgrind, dict(event) over plain.bin).
        if n < 7 or (first != 65 and first != 37):
            return _value_hashed(base + s[2], n, h)
        return _split_value(_value_hashed(base + s[2], n, h))
    return _line_value(base, s, urlenc)


cdef inline PyObject* _value_hit(const char* base, uint32_t* s, bint urlenc,
                                 uint64_t h) noexcept nogil:
    """The str of line ``s``'s value if the value cache holds it (borrowed), else NULL.

    ``h`` is the value's hash from ``_hash_ahead``. NULL also for a value that is not
    URL-encoded or might decode to ARRAY:: (the test of ``_value_ahead``): the caller
    decodes those the general way.
    """
    cdef uint32_t n = s[3] & _LEN_MASK
    cdef const char* p = base + s[2]
    cdef _ValueSlot* e
    if not urlenc or n > _VALUE_CACHE_MAX_LEN or (n >= 7 and (p[0] == 65 or p[0] == 37)):
        return NULL
    e = &_value_cache[h & (_VALUE_CACHE_SIZE - 1)]
    if e.hash == h and e.length == n and _same(e.raw, p, n):
        return e.text
    return NULL


cdef inline object _split_value(str v):
    # Only a value starting with 'A' once decoded can be ARRAY:: (%41 decodes to it).
    if PyUnicode_GET_LENGTH(v) >= 7 and PyUnicode_READ_CHAR(v, 0) == 65:
        return _split_array(v)
    return v


cdef inline bint _is_digits(const char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if n == 0:
        return False
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return False
    return True


cdef inline Py_ssize_t _to_int(const char* p, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    """Digits to an integer; -1 once the value passes ``limit`` (no overflow)."""
    cdef Py_ssize_t i, v = 0
    for i in range(n):
        v = v * 10 + (p[i] - 48)
        if v > limit:
            return -1
    return v


cdef inline bint _eq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t ln) noexcept nogil:
    return n == ln and memcmp(p, lit, n) == 0


cdef bytes _excerpt(const char* p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(p, n if n < _EXCERPT else _EXCERPT)


cdef str _number(const char* p, Py_ssize_t n):
    """The decimal digits ``p[:n]`` as the number they write (no leading zeros)."""
    while n > 1 and p[0] == 48:
        p += 1
        n -= 1
    return _decode_bytes(p, n)


# ---------------------------------------------------------------------------
# ESLEvent
# ---------------------------------------------------------------------------

# Cell arrays of _CELLS cells, kept for reuse: an array of 1.5 KiB is above what
# glibc's per-thread cache serves, and its malloc and free cost about 500
# instructions per dict(event). Events are freed in bursts (the messages of one
# read), so a stack of them serves the next read's listings.
cdef PyObject** _spare_cells[_SPARE_CELLS]
cdef Py_ssize_t _nspare = 0


cdef inline PyObject** _cells_alloc(Py_ssize_t cap) noexcept:
    """An array for ``cap`` cells (two pointers each), or NULL."""
    global _nspare
    if cap == _CELLS and _nspare:
        _nspare -= 1
        return _spare_cells[_nspare]
    return <PyObject**>PyMem_Malloc(2 * cap * sizeof(PyObject*))


cdef inline void _cells_free(PyObject** cells, Py_ssize_t cap) noexcept:
    global _nspare
    if cap == _CELLS and _nspare < _SPARE_CELLS:
        _spare_cells[_nspare] = cells
        _nspare += 1
    else:
        PyMem_Free(cells)


@cython.no_gc
cdef class ESLEvent:
    """One Event Socket message as a mutable mapping of header name to value.

    A parsed plain event starts lazy: it keeps the bytes of its frame (its own
    copy, or its span of the socket read: see ``Parser``), and only the lines
    routing reads (Event-Name, Event-Subclass, Unique-ID) were located
    while framing. ``_lines``, the offsets of every ``Name: value`` line, is built
    by the first read of any other header, and a line without ``:`` fails that
    read (ProtocolError), not ``feed()``: routing an event never walks its ~75
    lines. Reading a header decodes that header only; anything that needs them
    all (iteration, ``len``, equality, mutation) decodes everything once into
    ``_dict``, which is the truth from then on.

    ``dict(event)`` is the exception, because CPython copies any mapping that is
    not a dict subclass the slow way: ``keys()``, then one ``event[name]`` per
    name. Decoding into ``_dict`` first would build every entry twice, so
    ``keys()`` decodes the lines into ``_cells``, one (name, value) per distinct
    name in wire order (a line met in an earlier event straight from the line
    cache, see ``_list_block``), and answers with a view over the names; the
    ``event[name]`` calls that follow come in that order and are served from the
    cell after the previous one (``_next``). ``_cells`` is a C array, not a
    list: two more garbage-collected objects per event would make the cyclic GC
    run (and walk every live event) noticeably more often. Values are shared the
    way ``_dict`` shares them: ``dict(event)`` and later reads hand out the same
    ARRAY:: list, which materializing then keeps.

    The cyclic GC does not track events (``no_gc``). A busy connection allocates
    hundreds of thousands of them a second; tracked, each allocation counts toward a
    collection and every collection walks the live ones (with tracking the consumer
    bench ran ~300k events/s, without ~490k). An event can only be part of a cycle if a
    caller stores, as a value, an object that refers back to it: values are strings or
    lists of strings by contract, and such a cycle would never be collected.
    """

    cdef object _dict          # dict once materialized, else None
    # While lazy, after keys(): per distinct name (_ncells of them) the name
    # (borrowed: a name cache entry lives as long as the process) and its value
    # (owned), or a NULL value for a list (ARRAY:: or repeated name), kept in
    # _arrays by cell: a list handed out could be made to hold the event, and
    # the GC sees no cycle through C.
    cdef PyObject** _cells
    cdef Py_ssize_t _ncells
    cdef Py_ssize_t _cellcap   # cells _cells has room for
    cdef dict _arrays
    cdef Py_ssize_t _next      # line the next __getitem__ most likely asks for
    # _raw[_off:_off + _size] holds this message's bytes: every offset in _lines, the
    # routing positions and the body are relative to _off. _raw is the message's own
    # copy (_off 0), or the chunk it was framed from (Parser(share=True)).
    cdef bytes _raw
    cdef Py_ssize_t _off
    cdef Py_ssize_t _size
    cdef uint32_t* _lines
    cdef Py_ssize_t _nlines
    # A plain event's header lines are its bytes up to _block_end; -1 once _lines is
    # built (or for any other message, indexed while framing).
    cdef Py_ssize_t _block_end
    cdef long long _frame_offset  # stream offset of the frame, for a late ProtocolError
    cdef bint _urlenc
    cdef Py_ssize_t _body_start  # -1: no body
    cdef Py_ssize_t _body_len
    cdef object _raw_body_obj  # bytes, None, or _UNSET when still inside _raw
    cdef object _body_str
    cdef bint _body_decoded
    cdef object _name
    cdef bint _name_known
    cdef Py_ssize_t _decoded
    # Where the first line of Event-Name, Event-Subclass and Unique-ID starts in
    # _raw and how many there are (up to 2), noted while framing: a name on one
    # line is read without _lines. _route_seen has a bit per name once decoded.
    cdef Py_ssize_t _en_pos, _sub_pos, _uuid_pos
    cdef int _en_n, _sub_n, _uuid_n, _route_seen
    cdef readonly int kind
    cdef readonly str content_type

    __hash__ = None

    def __cinit__(self):
        self._dict = None
        self._cells = NULL
        self._arrays = None
        self._raw = None
        self._off = 0
        self._size = 0
        self._lines = NULL
        self._nlines = 0
        self._block_end = -1
        self._body_start = -1
        self._body_len = 0
        self._raw_body_obj = None
        self._body_str = None
        self._body_decoded = False
        self._name_known = False
        self._decoded = 0
        self.kind = _K_EVENT
        self.content_type = "text/event-plain"

    def __init__(self, headers=None, body=None):
        cdef dict d = {}
        if headers is not None:
            items = headers.items() if isinstance(headers, Mapping) else headers
            for key, value in items:
                _check_value(value)
                if type(value) is list:
                    value = list(value)
                old = d.get(key)
                d[key] = value if old is None else _merge(old, value)
        self._dict = d
        self._decoded = len(d)
        self._set_body(body)

    def __dealloc__(self):
        self._drop_cells()
        if self._lines != NULL:
            PyMem_Free(self._lines)

    # -- construction from the parser ------------------------------------

    cdef void _set_body(self, object body) except *:
        self._body_start = -1
        self._body_decoded = False
        self._body_str = None
        if body is None:
            self._raw_body_obj = None
        elif isinstance(body, str):
            self._raw_body_obj = (<str>body).encode("utf-8", "surrogateescape")
            self._body_str = body
            self._body_decoded = True
        elif isinstance(body, bytes):
            self._raw_body_obj = body
        else:
            raise TypeError(f"body must be str, bytes or None, not {type(body).__name__}")

    # -- lazy access ------------------------------------------------------

    cdef inline const char* _p(self) noexcept:
        return PyBytes_AS_STRING(self._raw) + self._off

    cdef void _detach(self) except *:
        """Own a copy of this message's bytes if it shares a larger chunk (Parser.release)."""
        if self._raw is not None and (self._off != 0 or self._size != PyBytes_GET_SIZE(self._raw)):
            self._raw = PyBytes_FromStringAndSize(self._p(), self._size)
            self._off = 0

    cdef inline int _need_lines(self) except -1:
        if self._block_end >= 0:
            self._index_lines()
        return 0

    cdef int _index_lines(self) except -1:
        """Build ``_lines`` for a plain event; a line without ``:`` is a ProtocolError.

        The inner Content-Length lines were checked while framing and are skipped:
        they are framing, not headers of the event. On error nothing is kept, so
        every later read that needs the index raises the same error again.
        """
        cdef const char* p = self._p()
        cdef Py_ssize_t pos = 0, cnt = 0, cap = 96, ve
        cdef uint32_t* lines
        cdef uint32_t* grown
        cdef const char* nl
        cdef int status
        lines = <uint32_t*>PyMem_Malloc(cap * _SLOT * sizeof(uint32_t))
        if lines == NULL:
            raise MemoryError()
        while True:
            status = genesis_index(p, &pos, self._block_end, lines, &cnt, cap)
            if status == 0:
                break
            if status < 0:
                PyMem_Free(lines)
                nl = <const char*>memchr(p + pos, 10, self._block_end - pos)
                ve = nl - p
                if ve > pos and p[ve - 1] == 13:
                    ve -= 1
                raise self._no_colon(p + pos, ve - pos)
            cap *= 2
            grown = <uint32_t*>PyMem_Realloc(lines, cap * _SLOT * sizeof(uint32_t))
            if grown == NULL:
                PyMem_Free(lines)
                raise MemoryError()
            lines = grown
        self._lines = lines
        self._nlines = cnt
        self._block_end = -1
        return 0

    cdef object _no_colon(self, const char* line, Py_ssize_t n):
        """The ProtocolError of the header line ``line[:n]`` (no CR LF), which has no colon."""
        return ProtocolError("event header line without ':'", self._frame_offset,
                             _excerpt(line, n))

    cdef object _route_value(self, Py_ssize_t pos, Py_ssize_t name_len, int bit):
        """The value of the one line of a routing name, read where framing found it."""
        cdef const char* p = self._p()
        cdef Py_ssize_t vs = pos + name_len + 1, ve
        # The line ends before the blank line that framing found, so an LF exists.
        ve = <const char*>memchr(p + vs - 1, 10, self._size - vs + 1) - p
        if ve > vs and p[ve - 1] == 13:
            ve -= 1
        if vs < ve and p[vs] == 32:
            vs += 1
        if not (self._route_seen & bit):
            self._route_seen |= bit
            self._decoded += 1
        return _split_value(_value_str(p + vs, ve - vs))

    cdef void _count_line(self, uint32_t* s) noexcept:
        """Count the line ``s`` in ``decoded`` the first time its value is decoded.

        A routing name on one line may have been counted already by a read that
        found it while framing (its ``_route_seen`` bit), not through ``_lines``.
        """
        cdef int bit = 0
        if s[3] & _SEEN:
            return
        s[3] |= _SEEN
        if self._en_n == 1 and <Py_ssize_t>s[0] == self._en_pos:
            bit = 1
        elif self._sub_n == 1 and <Py_ssize_t>s[0] == self._sub_pos:
            bit = 2
        elif self._uuid_n == 1 and <Py_ssize_t>s[0] == self._uuid_pos:
            bit = 4
        if bit:
            if self._route_seen & bit:
                return
            self._route_seen |= bit
        self._decoded += 1

    cdef object _value_at(self, Py_ssize_t i):
        return _line_value(self._p(), self._lines + i * _SLOT, self._urlenc)

    cdef object _lookup(self, object key, object default):
        """Value of ``key`` or ``default``, decoding only the matching lines."""
        cdef Py_ssize_t i
        if self._dict is not None:
            return (<dict>self._dict).get(key, default)
        if self._cells != NULL:
            i = self._cell_index(key)
            return default if i < 0 else self._cell_value(i)
        if type(key) is not str:
            return default if not isinstance(key, str) else self._materialize().get(key, default)
        return self._scan(<str>key, default)

    cdef object _scan(self, str key, object default):
        """Look ``key`` up in the line index of a lazy message."""
        cdef const char* k
        cdef Py_ssize_t kl, i
        cdef const char* base
        cdef uint32_t* s
        cdef object found = None
        cdef bint hit = False
        try:
            k = PyUnicode_AsUTF8AndSize(key, &kl)
        except UnicodeEncodeError:
            return self._materialize().get(key, default)
        if self.kind == _K_EVENT:
            # What the engine routes by: their lines were noted while framing.
            if kl == 9 and self._uuid_n < 2 and memcmp(k, b"Unique-ID", 9) == 0:
                return self._routed(self._uuid_pos, 9, 4, self._uuid_n, default)
            if kl == 10 and self._en_n < 2 and memcmp(k, b"Event-Name", 10) == 0:
                return self._routed(self._en_pos, 10, 1, self._en_n, default)
            if kl == 14 and self._sub_n < 2 and memcmp(k, b"Event-Subclass", 14) == 0:
                return self._routed(self._sub_pos, 14, 2, self._sub_n, default)
        self._need_lines()
        base = self._p()
        for i in range(self._nlines):
            s = self._lines + i * _SLOT
            if s[1] == kl and memcmp(base + s[0], k, kl) == 0:
                if not hit and not (s[3] & _SEEN):
                    self._decoded += 1
                s[3] |= _SEEN
                if hit:
                    found = _merge(found, self._value_at(i))
                else:
                    found = self._value_at(i)
                    hit = True
        return found if hit else default

    cdef dict _materialize(self):
        cdef dict d
        cdef const char* base
        cdef uint32_t* s
        cdef Py_ssize_t i
        cdef str name
        cdef PyObject* old
        cdef Py_ssize_t size
        if self._dict is not None:
            return <dict>self._dict
        d = _PyDict_NewPresized(self._ncells if self._cells != NULL else self._nlines)
        if self._cells != NULL:
            for i in range(self._ncells):
                PyDict_SetItem(d, <object>self._cells[2 * i], self._cell_value(i))
            self._drop_cells()
        elif self._raw is not None:
            self._need_lines()
            base = self._p()
            for i in range(self._nlines):
                s = self._lines + i * _SLOT
                name = _name_str(base + s[0], s[1])
                value = self._value_at(i)
                # Values are shared between lines (the value cache), so whether the
                # name was new is told by the dict's size, not by identity.
                size = len(d)
                old = PyDict_SetDefault(d, name, value)
                if len(d) == size:
                    PyDict_SetItem(d, name, _merge(<object>old, value))
        self._dict = d
        self._decoded = len(d)
        return d

    cdef bint _list(self) except -1:
        """Decode a lazy message into ``_cells``; False for a name the cache refuses.

        Repeats are told apart by name cache slot, so a name too long or odd
        for the cache leaves the message to ``_materialize``. A plain event not
        indexed yet (what ``dict(event)`` nearly always meets) takes ``_list_block``;
        this pass serves the others from the line index.
        """
        cdef const char* base = self._p()
        cdef uint32_t* s
        cdef Py_ssize_t i, j, slot, n
        cdef PyObject** cells
        cdef bint urlenc = self._urlenc
        # Hashes of the lines ahead, whose cache slots are being prefetched (_hash_ahead).
        cdef uint64_t name_h[_RING]
        cdef uint64_t value_h[_RING]
        cdef uint64_t met[_MET_WORDS]
        cdef PyObject* hit
        cdef bint repeated
        # The line array and the count of cells filled, in locals: the compiler cannot
        # keep self's fields in registers across the stores to the cells and the cache,
        # and reloaded both on every line (self._ncells is still written each time, for
        # _drop_cells after an error).
        cdef uint32_t* lines
        cdef Py_ssize_t ncells = 0
        if self._block_end >= 0 and self._urlenc:
            return self._list_block()
        self._need_lines()
        n = self._nlines
        lines = self._lines
        memset(met, 0, sizeof(met))
        # At least _CELLS, so that the array can be kept for reuse (_cells_free).
        cells = self._new_cells(max(n, _CELLS))
        for j in range(min(_AHEAD, n)):
            _hash_ahead(base, lines + j * _SLOT, j, name_h, value_h, urlenc)
        for i in range(n):
            j = i + _AHEAD
            if j < n:
                _hash_ahead(base, lines + j * _SLOT, j, name_h, value_h, urlenc)
            s = lines + i * _SLOT
            slot = _name_slot(base + s[0], s[1], name_h[i & (_RING - 1)])
            if slot < 0:
                self._drop_cells()
                return False
            repeated = _met(met, slot)
            hit = _value_hit(base, s, urlenc, value_h[i & (_RING - 1)])
            if hit != NULL and not repeated:
                # Nearly every line: a name met once and a cached value. The str is
                # borrowed from the cache and stored with one reference taken, no
                # temporary holding it (which cost a reference-count pair per line).
                s[3] |= _SEEN
                cells[2 * ncells] = _name_cache[slot].text
                Py_INCREF(<object>hit)
                cells[2 * ncells + 1] = hit
                ncells += 1
                self._ncells = ncells
                continue
            value = (<object>hit if hit != NULL
                     else _value_ahead(base, s, urlenc, urlenc, value_h[i & (_RING - 1)]))
            s[3] |= _SEEN
            ncells = self._place(_name_cache[slot].text, value, repeated)
        self._next = 0
        self._decoded = ncells
        return True

    cdef PyObject** _new_cells(self, Py_ssize_t cap) except NULL:
        """A cell array of ``cap`` cells, empty, as ``_cells``.

        Owned from here on (every value cell below _ncells holds a reference or NULL):
        an error or a refused name in a pass leaves a partly filled array that
        _drop_cells frees.
        """
        cdef PyObject** cells = _cells_alloc(cap)
        if cells == NULL:
            raise MemoryError()
        self._cells = cells
        self._cellcap = cap
        self._ncells = 0
        return cells

    cdef bint _list_block(self) except -1:
        """``_list`` of a plain event whose lines are not indexed yet: one pass over its bytes.

        A line met before (``_line_cache``) is found from its bytes alone: no colon
        search, no decoding, no offsets kept. Lines come in the same order event after
        event, so the line that followed the previous one last time is tried first: a
        compare of its bytes and line feed finds the line and its end at once, with no
        hash and no search for the line feed (87% of the corpus's lines, replayed).
        Otherwise the line is hashed and looked up. Any other line takes the way of the
        line index (its colon, the name cache, the value decoded) and is cached for the
        next event; a line without a colon raises here, as ``_index_lines`` would. The
        index itself is not built: the cells answer every read from now on.
        """
        cdef const char* base = self._p()
        cdef Py_ssize_t stop = self._block_end
        cdef genesis_lines scan
        # Unlike _list, no slot is prefetched lines ahead: in same-process paired rounds
        # that ran no faster here, for 2.1k more instructions per event.
        cdef Py_ssize_t after = 0, le
        cdef Py_ssize_t pos, n, nl, vs, slot
        cdef bint repeated
        # The scan stands at ``after`` (a guessed line moves ``after`` past it alone).
        cdef bint scanning = True
        cdef Py_ssize_t ncells = 0, cap = _CELLS
        cdef uint64_t h
        cdef _LineSlot* line
        # The cached line just placed, whose ``next`` guesses this one; NULL: no guess.
        cdef _LineSlot* prev = NULL
        cdef _LineSlot* last
        cdef uint64_t met[_MET_WORDS]
        cdef PyObject** cells
        cdef PyObject** grown
        cells = self._new_cells(cap)
        memset(met, 0, sizeof(met))
        genesis_lines_start(&scan, 0)
        while after < stop:
            pos = after
            if ncells == cap:
                cap *= 2
                grown = <PyObject**>PyMem_Realloc(cells, 2 * cap * sizeof(PyObject*))
                if grown == NULL:
                    self._ncells = ncells
                    self._drop_cells()
                    raise MemoryError()
                cells = grown
                self._cells = cells
                self._cellcap = cap
            line = NULL
            if prev != NULL:
                line = &_line_cache[prev.next]
                n = line.length
                # The guess's raw ends with a line feed, so a longer line with the same
                # start fails here too; a CRLF line fails and is found by its hash.
                if pos + n < stop and _same(line.raw, base + pos, n + 1):
                    after = pos + n + 1
                    scanning = False
                else:
                    line = NULL
            if line == NULL:
                if not scanning:
                    genesis_lines_start(&scan, pos)
                    scanning = True
                le = genesis_next_lf(base, &scan, stop)
                n = (le - 1 if le > pos and base[le - 1] == 13 else le) - pos
                after = le + 1
                h = _hash_name(base + pos, n) if n <= _LINE_INLINE else 0
                if h:
                    line = &_line_cache[_line_slot(h)]
                    if line.hash == h and line.length == n and _same(line.raw, base + pos, n):
                        if prev != NULL and prev.next != _line_slot(h):
                            prev.next = _line_slot(h)
                    else:
                        line = NULL
            if line != NULL:
                prev = line
                if not _met(met, line.name):
                    # Nearly every line: known, and its name not met yet in this event.
                    cells[2 * ncells] = line.text
                    Py_INCREF(<object>line.value)
                    cells[2 * ncells + 1] = line.value
                    ncells += 1
                    continue
                # Known, its name a repeat: merged like any repeat. The value is held
                # here, since merging allocates and a finalizer run by that allocation
                # may replace the slot.
                self._ncells = ncells
                value = <object>line.value
                ncells = self._place(line.text, value, True)
                continue
            # Off the hit path, self._ncells is kept current for _drop_cells.
            self._ncells = ncells
            last = prev
            prev = NULL
            nl = genesis_split_line(base, pos, pos + n, stop, &vs)
            if nl == -1:
                self._drop_cells()
                raise self._no_colon(base + pos, n)
            if nl == -2:
                continue  # the inner framing, checked by Parser._plain
            slot = _name_slot(base + pos, nl, _hash_name(base + pos, nl))
            if slot < 0:
                self._drop_cells()
                return False
            repeated = _met(met, slot)
            value = _split_value(_value_str(base + vs, pos + n - vs))
            # A line ending in CR (before the CR of CRLF) is not kept: a guess, which
            # compares the line feed after it, would take the CRLF line it equals.
            if h and type(value) is str and base[pos + n - 1] != 13:
                prev = _keep_line(base + pos, n, h, slot, <str>value)
                if last != NULL:
                    last.next = _line_slot(h)
            ncells = self._place(_name_cache[slot].text, value, repeated)
        self._ncells = ncells
        self._next = 0
        self._decoded = ncells
        return True

    cdef Py_ssize_t _place(self, PyObject* name, object value, bint repeated) except -1:
        """Put ``value``, the decoded value of a line named ``name`` (a name cache str),
        in the cells after the ``_ncells`` filled (the array has room for one more);
        the new count.

        A ``repeated`` name, met before in this pass, is merged into one list in wire
        order at its first cell, found by identity: repeats are rare.
        """
        cdef PyObject** cells = self._cells
        cdef Py_ssize_t n = self._ncells
        cdef Py_ssize_t cell = 0
        if repeated:
            # Every name a pass marks gets its cell before anything can fail, so the
            # search finds it; bounded all the same.
            while cell < n and cells[2 * cell] != name:
                cell += 1
            if cell < n:
                merged = _merge(self._cell_value(cell), value)
                Py_XDECREF(cells[2 * cell + 1])
                cells[2 * cell + 1] = NULL
                if self._arrays is None:
                    self._arrays = {}
                self._arrays[cell] = merged
                return n
        cells[2 * n] = name
        if type(value) is str:
            Py_INCREF(value)
            cells[2 * n + 1] = <PyObject*>value
        else:
            cells[2 * n + 1] = NULL
            if self._arrays is None:
                self._arrays = {}
            self._arrays[n] = value
        self._ncells = n + 1
        return n + 1

    cdef void _drop_cells(self) noexcept:
        cdef Py_ssize_t i
        if self._cells == NULL:
            return
        for i in range(self._ncells):
            Py_XDECREF(self._cells[2 * i + 1])
        _cells_free(self._cells, self._cellcap)
        self._cells = NULL
        self._arrays = None

    cdef object _cell_value(self, Py_ssize_t i):
        cdef PyObject* cell = self._cells[2 * i + 1]
        return (<dict>self._arrays)[i] if cell == NULL else <object>cell

    cdef Py_ssize_t _cell_index(self, object key) except -2:
        """Cell of ``key`` among the listed names, or -1.

        ``dict(event)`` asks with the very name objects ``keys()`` gave, in wire
        order: the cell after the previous answer, found by identity, serves it
        in O(1). Any other order or an equal but distinct str scans the names.
        """
        cdef Py_ssize_t i = self._next
        cdef Py_ssize_t n = self._ncells
        cdef PyObject** cells = self._cells
        if i < n and cells[2 * i] == <PyObject*>key:
            self._next = i + 1
            return i
        if not isinstance(key, str):
            return -1
        for i in range(n):
            if cells[2 * i] == <PyObject*>key or <str>cells[2 * i] == key:
                self._next = i + 1
                return i
        return -1

    # -- routing ----------------------------------------------------------

    @property
    def name(self):
        """Routing key: Event-Subclass for CUSTOM events, else the last Event-Name."""
        if self._name_known:
            return self._name
        self._name = self._compute_name()
        self._name_known = True
        return self._name

    cdef object _compute_name(self):
        if self.kind != _K_EVENT:
            return None
        value = self._lookup("Event-Name", None)
        if type(value) is list:
            value = (<list>value)[len(<list>value) - 1] if value else None
        if value == "CUSTOM":
            sub = self._lookup("Event-Subclass", None)
            if type(sub) is list:
                sub = (<list>sub)[len(<list>sub) - 1] if sub else None
            if sub is not None:
                return sub
        return value

    cdef inline object _routed(self, Py_ssize_t pos, Py_ssize_t name_len, int bit, int count,
                               object default):
        """``get`` of a routing name that is on one line (``count`` 1) or absent (0).

        A repeated one (a re-typed COMMAND has two Event-Name lines) never gets
        here: it takes the general path, which merges the lines into a list.
        """
        if count == 0:
            return default
        return self._route_value(pos, name_len, bit)

    # -- body -------------------------------------------------------------

    @property
    def raw_body(self):
        """The body exactly as received (bytes), or None."""
        if self._body_start >= 0:
            self._raw_body_obj = PyBytes_FromStringAndSize(
                self._p() + self._body_start, self._body_len)
            self._body_start = -1
        return self._raw_body_obj

    @raw_body.setter
    def raw_body(self, value):
        if value is not None and not isinstance(value, bytes):
            raise TypeError(f"raw_body must be bytes or None, not {type(value).__name__}")
        self._set_body(value)

    @property
    def decoded(self):
        """How many header names have had their value decoded so far (a laziness probe)."""
        return self._decoded

    @property
    def body(self):
        """The body decoded as UTF-8 (invalid bytes kept as lone surrogates), or None."""
        if not self._body_decoded:
            if self._body_start >= 0:
                self._body_str = _decode_bytes(
                    self._p() + self._body_start, self._body_len)
            elif self._raw_body_obj is not None:
                self._body_str = (<bytes>self._raw_body_obj).decode("utf-8", "surrogateescape")
            self._body_decoded = True
        return self._body_str

    @body.setter
    def body(self, value):
        self._set_body(value)

    # -- mapping protocol -------------------------------------------------

    def __getitem__(self, key):
        cdef Py_ssize_t i = self._next
        cdef PyObject* cell
        # dict(event): the next line, by identity (see _cell_index). Everything else is
        # in _item, which keeps this path (once per name of every dict(event)) short.
        if self._cells != NULL and i < self._ncells and self._cells[2 * i] == <PyObject*>key:
            self._next = i + 1
            cell = self._cells[2 * i + 1]
            if cell != NULL:
                return <object>cell
            # A list, in _arrays: the dict lookup is out of line, so that this path
            # needs no stack frame of its own.
            return self._cell_value(i)
        return self._item(key)

    cdef object _item(self, object key):
        """``event[key]`` the general way: the decoded dict, or a lookup of the lines."""
        if self._dict is not None:
            return (<dict>self._dict)[key]
        value = self._lookup(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        return self._lookup(key, default)

    def __contains__(self, key):
        cdef const char* k
        cdef Py_ssize_t kl, i
        cdef const char* base
        cdef uint32_t* s
        if self._dict is not None:
            return key in <dict>self._dict
        if self._cells != NULL:
            # Listed by keys(), maybe without a line index (_list_block): ask the names.
            return self._cell_index(key) >= 0
        if not isinstance(key, str):
            return False
        try:
            k = PyUnicode_AsUTF8AndSize(key, &kl)
        except UnicodeEncodeError:
            return key in self._materialize()
        # Presence needs no value: nothing is decoded.
        self._need_lines()
        base = self._p()
        for i in range(self._nlines):
            s = self._lines + i * _SLOT
            if s[1] == kl and memcmp(base + s[0], k, kl) == 0:
                return True
        return False

    def __setitem__(self, key, value):
        _check_value(value)
        d = self._materialize()
        d[key] = value
        self._decoded = len(d)
        self._name_known = False

    def __delitem__(self, key):
        del self._materialize()[key]
        self._name_known = False

    def __len__(self):
        return len(self._materialize())

    def __iter__(self):
        return iter(self._materialize())

    def keys(self):
        if self._dict is None and (self._cells != NULL or self._list()):
            self._next = 0
            view = <_Keys>_Keys.__new__(_Keys)
            view._event = self
            return view
        return self._materialize().keys()

    def items(self):
        return self._materialize().items()

    def values(self):
        return self._materialize().values()

    def pop(self, key, default=_MISSING):
        self._name_known = False
        if default is _MISSING:
            return self._materialize().pop(key)
        return self._materialize().pop(key, default)

    def popitem(self):
        self._name_known = False
        return self._materialize().popitem()

    def setdefault(self, key, default=None):
        d = self._materialize()
        if key in d:
            return d[key]
        self[key] = default
        return default

    def update(self, other=(), **kwargs):
        pairs = other.items() if isinstance(other, Mapping) else (
            other.keys() and [(k, other[k]) for k in other.keys()]
            if hasattr(other, "keys") else other)
        for key, value in pairs:
            self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def clear(self):
        self._materialize().clear()
        self._name_known = False

    def copy(self):
        """A plain dict of the headers (the body is not part of the mapping)."""
        return {k: (list(v) if type(v) is list else v) for k, v in self._materialize().items()}

    def __eq__(self, other):
        if isinstance(other, ESLEvent):
            return (self._materialize() == (<ESLEvent>other)._materialize()
                    and self.raw_body == other.raw_body)
        if isinstance(other, Mapping):
            return self._materialize() == dict(other)
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        if result is NotImplemented:
            return result
        return not result

    def __repr__(self):
        d = self._materialize()
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in list(d.items())[:4])
        more = f", ... {len(d) - 4} more" if len(d) > 4 else ""
        return f"<ESLEvent {self.name or self.content_type!s} {{{shown}{more}}}>"


MutableMapping.register(ESLEvent)


@cython.no_gc
@cython.freelist(8)
cdef class _Keys:
    """``keys()`` of an event whose values sit in ``_cells``: a live view, like dict_keys.

    Iteration and size come from the cells, so that ``dict(event)`` never
    builds the event's own dict; everything else is answered by the dict_keys of
    the materialized event, so the two behave the same.

    ``dict(event)`` makes one view and one iterator per event, so both come from a
    free list and stay out of the cyclic GC (which would count each allocation
    toward a collection). Neither can be part of a cycle, for the reason ESLEvent
    gives.
    """

    cdef ESLEvent _event

    __hash__ = None

    cdef object _view(self):
        return self._event._materialize().keys()

    def __iter__(self):
        cdef ESLEvent ev = self._event
        cdef _KeyIter it
        if ev._dict is not None:
            return iter(<dict>ev._dict)
        it = <_KeyIter>_KeyIter.__new__(_KeyIter)
        it._event = ev
        it._size = ev._ncells
        return it

    def __len__(self):
        if self._event._dict is None:
            return self._event._ncells
        return len(<dict>self._event._dict)

    def __contains__(self, key):
        return key in self._event

    def __reversed__(self):
        return reversed(self._view())

    @property
    def mapping(self):
        return self._view().mapping

    def isdisjoint(self, other):
        return self._view().isdisjoint(other)

    def __eq__(self, other):
        return self._view() == other

    def __ne__(self, other):
        return self._view() != other

    def __lt__(self, other):
        return self._view() < other

    def __le__(self, other):
        return self._view() <= other

    def __gt__(self, other):
        return self._view() > other

    def __ge__(self, other):
        return self._view() >= other

    def __and__(self, other):
        return self._view() & other

    def __rand__(self, other):
        return other & self._view()

    def __or__(self, other):
        return self._view() | other

    def __ror__(self, other):
        return other | self._view()

    def __sub__(self, other):
        return self._view() - other

    def __rsub__(self, other):
        return other - self._view()

    def __xor__(self, other):
        return self._view() ^ other

    def __rxor__(self, other):
        return other ^ self._view()

    def __repr__(self):
        return repr(self._view())


KeysView.register(_Keys)


@cython.no_gc
@cython.freelist(8)
cdef class _KeyIter:
    """Iterator of a ``_Keys`` view, read straight from the cells (no list built).

    A mutation materializes the event mid-way: iteration then goes on over its
    dict from the same position, and raises as a dict_keys iterator would when
    the number of names changed.
    """

    cdef ESLEvent _event
    cdef Py_ssize_t _i
    cdef Py_ssize_t _size
    cdef object _rest

    def __iter__(self):
        return self

    def __next__(self):
        # The event is read through self (a borrowed reference): this runs once per
        # name of every dict(event).
        cdef Py_ssize_t i = self._i
        if self._event._cells != NULL:
            if i >= self._event._ncells:
                raise StopIteration
            self._i = i + 1
            return <object>self._event._cells[2 * i]
        return self._from_dict(i)

    cdef object _from_dict(self, Py_ssize_t i):
        """``__next__`` once the event was materialized: its dict, from position ``i``."""
        cdef ESLEvent ev = self._event
        if self._rest is None:
            if len(<dict>ev._dict) != self._size:
                raise RuntimeError("dictionary changed size during iteration")
            rest = iter(<dict>ev._dict)
            for _ in range(i):
                next(rest)
            self._rest = rest
        return next(self._rest)

    def __length_hint__(self):
        return self._size - self._i


cdef inline void _check_value(object value) except *:
    if type(value) is str or isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    raise TypeError(f"header values are str or list[str], not {type(value).__name__}")


# ---------------------------------------------------------------------------
# JSON and XML event bodies
# ---------------------------------------------------------------------------

class _Pairs(list):
    """Marks a decoded JSON object so duplicate keys survive (``object_pairs_hook``)."""


cdef tuple _parse_json(bytes payload, Py_ssize_t offset):
    """A ``text/event-json`` body: one flat object, values strings or string arrays."""
    cdef dict d = {}
    cdef object body = None
    try:
        pairs = json.loads(payload.decode("utf-8", "surrogateescape"), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"JSON event does not parse: {exc}", offset, payload[:_EXCERPT])
    if type(pairs) is not _Pairs:
        raise ProtocolError("JSON event is not an object", offset, payload[:_EXCERPT])
    for key, value in pairs:
        if not (type(value) is str
                or (type(value) is list and all(type(v) is str for v in value))):
            raise ProtocolError(
                f"JSON event header {key!r} is not a string or array of strings",
                offset, payload[:_EXCERPT])
        old = d.get(key)
        d[key] = value if old is None else _merge(old, value)
    body = d.pop("_body", None)
    if body is not None and type(body) is not str:
        raise ProtocolError("JSON event _body is not a string", offset, payload[:_EXCERPT])
    d.pop("Content-Length", None)
    for key, value in d.items():
        if type(value) is str:
            d[key] = _split_array(value)
    return d, body


cdef inline bint _is_ws(char c) noexcept nogil:
    return c == 32 or c == 10 or c == 13 or c == 9 or c == 11 or c == 12


cdef inline Py_ssize_t _skip_ws(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(p[i]):
        i += 1
    return i


cdef inline bint _at(const char* p, Py_ssize_t i, Py_ssize_t n, bytes lit):
    cdef Py_ssize_t ln = PyBytes_GET_SIZE(lit)
    return i + ln <= n and memcmp(p + i, PyBytes_AS_STRING(lit), ln) == 0


cdef inline bint _xml_name_char(char c) noexcept nogil:
    return not (_is_ws(c) or c == 60 or c == 62 or c == 47 or c == 38)


cdef Py_ssize_t _char_ref(const char* p, Py_ssize_t n) noexcept nogil:
    """Code point of ``#123`` or ``#x1F`` (the text between ``&`` and ``;``), or -1."""
    cdef Py_ssize_t i, v = 0, d
    if n >= 3 and p[1] == 120 and n - 2 <= 6:
        for i in range(2, n):
            d = _hexval(<unsigned char>p[i])
            if d < 0:
                return -1
            v = v * 16 + d
        return v
    if n >= 2 and n - 1 <= 7 and _is_digits(p + 1, n - 1):
        return _to_int(p + 1, n - 1, 1 << 30)
    return -1


cdef bytes _xml_unescape(const char* p, Py_ssize_t n, Py_ssize_t offset, bytes payload):
    """Replace XML's five named entities and character references.

    An ``&`` that starts none of them is kept as it is, like any other text.
    """
    cdef Py_ssize_t i = 0, j, k, code
    cdef list out
    cdef const char* semi
    cdef const char* amp
    if memchr(p, 38, n) == NULL:
        return PyBytes_FromStringAndSize(p, n)
    out = []
    while i < n:
        amp = <const char*>memchr(p + i, 38, n - i)
        if amp == NULL:
            out.append(PyBytes_FromStringAndSize(p + i, n - i))
            break
        j = amp - p
        out.append(PyBytes_FromStringAndSize(p + i, j - i))
        semi = <const char*>memchr(p + j + 1, 59, n - j - 1) if j + 1 < n else NULL
        k = (semi - p) if semi != NULL else -1
        if k > 0 and k - j - 1 <= 8:
            if _eq(p + j + 1, k - j - 1, "amp", 3):
                out.append(b"&")
            elif _eq(p + j + 1, k - j - 1, "lt", 2):
                out.append(b"<")
            elif _eq(p + j + 1, k - j - 1, "gt", 2):
                out.append(b">")
            elif _eq(p + j + 1, k - j - 1, "quot", 4):
                out.append(b'"')
            elif _eq(p + j + 1, k - j - 1, "apos", 4):
                out.append(b"'")
            elif p[j + 1] == 35 and (code := _char_ref(p + j + 1, k - j - 1)) >= 0:
                if code > 0x10FFFF:
                    raise ProtocolError(
                        f"XML event does not parse: character reference {code} out of range",
                        offset, payload[:_EXCERPT])
                out.append(chr(code).encode("utf-8", "surrogatepass"))
            else:
                out.append(b"&")
                i = j + 1
                continue
            i = k + 1
            continue
        out.append(b"&")
        i = j + 1
    return b"".join(out)


cdef tuple _parse_xml(bytes payload, Py_ssize_t offset):
    """A ``text/event-xml`` body, by a scanner for the fixed layout FreeSWITCH writes.

    ``<event><headers><Name>value</Name>...</headers>[<Content-Length>n</Content-Length>]
    [<body>text</body>]</event>``: values are URL-encoded inside their elements and the
    body is XML-escaped. FreeSWITCH indents the closing ``</body>`` after a body that
    ends in a newline, so Content-Length says where the real body stops.

    The layout is checked first and the headers after, so that a document broken in
    both places is refused for its layout, as the Python twin's pattern refuses it.
    """
    cdef const char* p = PyBytes_AS_STRING(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t i, at, ns, nl, vs, j, hend, cs = -1, ce = 0, bs = -1, be = 0, clen
    cdef dict d = {}
    cdef object body = None
    cdef bytes raw
    cdef str name
    i = _skip_ws(p, 0, n)
    if not _at(p, i, n, b"<event>"):
        raise ProtocolError("XML event does not parse", offset, payload[:_EXCERPT])
    i = _skip_ws(p, i + 7, n)
    if not _at(p, i, n, b"<headers>"):
        raise ProtocolError("XML event does not parse", offset, payload[:_EXCERPT])
    i += 9
    # Nothing after the header block may hold "</headers>" (its values stop at '<'),
    # so the block ends at the last one, and a header may itself be called "headers".
    hend = payload.rfind(b"</headers>", i)
    if hend < 0:
        raise ProtocolError("XML event does not parse", offset, payload[:_EXCERPT])
    j = _skip_ws(p, hend + 10, n)
    if _at(p, j, n, b"<Content-Length>"):
        cs = j + 16
        ce = _xml_text_end(p, cs, n, b"</Content-Length>", payload, offset)
        j = _skip_ws(p, ce + 17, n)
    if _at(p, j, n, b"<body>"):
        bs = j + 6
        be = _xml_text_end(p, bs, n, b"</body>", payload, offset)
        j = _skip_ws(p, be + 7, n)
    if not _at(p, j, n, b"</event>") or _skip_ws(p, j + 8, n) != n:
        raise ProtocolError("XML event does not parse", offset, payload[:_EXCERPT])
    # The headers, none reaching past the block.
    while True:
        at = i
        i = _skip_ws(p, i, hend)
        if i == hend:
            break
        if p[i] != 60:
            _xml_bad_header(payload, at, hend, offset)
        ns = i + 1
        j = ns
        while j < hend and _xml_name_char(p[j]):
            j += 1
        nl = j - ns
        if nl == 0 or j >= hend:
            _xml_bad_header(payload, at, hend, offset)
        if p[j] == 62:
            vs = j + 1
            j = vs
            while j < hend and p[j] != 60:
                j += 1
            if not (j + 3 + nl <= hend and p[j + 1] == 47
                    and memcmp(p + j + 2, p + ns, nl) == 0 and p[j + 2 + nl] == 62):
                _xml_bad_header(payload, at, hend, offset)
            raw = _xml_unescape(p + vs, j - vs, offset, payload)
            i = j + 3 + nl
        else:
            j = _skip_ws(p, j, hend)
            if not (j + 2 <= hend and p[j] == 47 and p[j + 1] == 62):
                _xml_bad_header(payload, at, hend, offset)
            raw = b""
            i = j + 2
        name = _name_str(p + ns, nl)
        value = _split_array(_value_str(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw)))
        old = d.get(name)
        d[name] = value if old is None else _merge(old, value)
    if bs >= 0:
        raw = _xml_unescape(p + bs, be - bs, offset, payload)
        if cs >= 0:
            if not _is_digits(p + cs, ce - cs):
                raise ProtocolError("XML event Content-Length is not a decimal number",
                                    offset, payload[cs:ce][:_EXCERPT])
            clen = _to_int(p + cs, ce - cs, PyBytes_GET_SIZE(raw) + 1)
            if clen < 0 or PyBytes_GET_SIZE(raw) < clen or raw[clen:].strip(b" \t"):
                raise ProtocolError("XML event body does not match its Content-Length",
                                    offset, raw[:_EXCERPT])
            raw = raw[:clen]
        body = raw
    return d, body


cdef Py_ssize_t _xml_text_end(const char* p, Py_ssize_t s, Py_ssize_t n, bytes close,
                              bytes payload, Py_ssize_t offset) except -1:
    """Where the text from ``s`` ends: at the first ``<``, which must start ``close``."""
    cdef Py_ssize_t e = s
    while e < n and p[e] != 60:
        e += 1
    if not _at(p, e, n, close):
        raise ProtocolError("XML event does not parse", offset, payload[:_EXCERPT])
    return e


cdef int _xml_bad_header(bytes payload, Py_ssize_t at, Py_ssize_t hend,
                         Py_ssize_t offset) except -1:
    """Refuse the header at ``at``: the excerpt runs from there, within the block."""
    raise ProtocolError("XML event header does not parse", offset,
                        payload[at:min(hend, at + _EXCERPT)])


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

cdef class Parser:
    """Incremental framer for the bytes FreeSWITCH sends.

    ``feed()`` may be called with any chunking; the result is the same list of
    messages. Memory is bounded by ``max_header_size`` while a header block is
    incomplete and by ``max_body_size`` while a body is, because a peer that never
    sends the blank line (or lies about Content-Length) must fail the connection,
    not grow it.

    Each plain event keeps the bytes of its frame. By default it copies them out of
    what ``feed()`` was given. With ``share=True`` a frame that lies whole inside a
    ``bytes`` chunk keeps a reference to that chunk instead: no copy and no
    allocation per event, so the events of one socket read live in the read's own
    (cache-warm) bytes. The cost is that a message kept after its chunk would keep
    the whole chunk alive, so the owner of the list ``feed()`` returned calls
    :meth:`release` once it is done with it, and every message still referenced
    elsewhere copies its frame out then. The engine does; a caller that does not
    only keeps more memory alive, never a wrong byte (bytes are immutable).
    """

    cdef char* _buf
    cdef Py_ssize_t _cap
    cdef bint _share
    # The caller's chunk while feed() frames it in place, when frames may share it.
    cdef bytes _data
    # Where _start and _end point: _buf, or the caller's bytes while feed() frames
    # them in place (never once feed() has returned: they are not ours to keep).
    cdef const char* _base
    cdef Py_ssize_t _start      # first byte of the current frame in _base
    cdef Py_ssize_t _end        # one past the last available byte
    cdef Py_ssize_t _scan       # frame-relative: where the header-end search resumes
    cdef Py_ssize_t _hdr_len    # frame-relative end of the header block, 0 while unknown
    cdef Py_ssize_t _clen       # outer Content-Length, -1 if none
    cdef int _kind
    cdef int _fmt
    cdef bint _has_event_name
    cdef uint32_t* _out         # offsets of the current frame's own header lines
    cdef Py_ssize_t _nout
    cdef Py_ssize_t _outcap
    cdef Py_ssize_t _ct_start, _ct_len
    cdef long long _offset
    cdef object _error
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t max_body_size

    def __cinit__(self, Py_ssize_t max_header_size=1 << 20, Py_ssize_t max_body_size=16 << 20,
                  bint share=False):
        if max_header_size <= 0 or max_body_size < 0:
            raise ValueError("max_header_size must be positive and max_body_size not negative")
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._share = share
        self._data = None
        self._buf = NULL
        self._cap = 0
        self._out = NULL
        self._outcap = 0
        self._reset()

    def __dealloc__(self):
        PyMem_Free(self._buf)
        PyMem_Free(self._out)

    cdef void _reset(self):
        self._base = self._buf
        self._start = 0
        self._end = 0
        self._scan = 0
        self._hdr_len = 0
        self._clen = -1
        self._nout = 0
        self._offset = 0
        self._error = None

    def reset(self):
        """Drop buffered bytes and the error state; offsets restart at 0."""
        self._reset()

    def release(self, list messages):
        """End the sharing of ``messages`` (a list ``feed()`` returned) with their chunk.

        A message that only ``messages`` refers to goes with the list, and its chunk
        with it; any other (a handler kept it, a queued coroutine or a span holds it)
        copies its own frame now, so it no longer keeps the chunk alive.
        """
        cdef Py_ssize_t i
        cdef PyObject* item
        for i in range(PyList_GET_SIZE(messages)):
            item = PyList_GET_ITEM(messages, i)
            if Py_REFCNT(item) > 1 and Py_TYPE(item) == <PyTypeObject*>ESLEvent:
                (<ESLEvent>item)._detach()

    @property
    def buffered(self):
        """Bytes held that do not yet form a complete message."""
        return self._end - self._start

    @property
    def offset(self):
        """Bytes consumed as complete messages since the last reset."""
        return self._offset

    cdef int _fail(self, str message, const char* p, Py_ssize_t n) except -1:
        raise ProtocolError(message, self._offset, _excerpt(p, n))

    def feed(self, data):
        """Append ``data`` and return every message it completes, in order.

        Only a frame that straddles two calls is copied into the parser's buffer:
        the others are framed where they lie in ``data`` (a message copies out
        what it keeps, unless it may share ``data``: see the class), so a 64 KiB
        read is not copied once more just to be parsed.
        """
        cdef const unsigned char[::1] view
        cdef Py_ssize_t n, take
        cdef const char* p = NULL
        cdef list out = []
        if self._error is not None:
            err = self._error
            raise ProtocolError(f"parser failed earlier ({err.reason}); reset() first",
                                err.offset, err.excerpt)
        if isinstance(data, memoryview) and not data.c_contiguous:
            data = data.tobytes()
        view = data
        n = view.shape[0]
        if n:
            p = <const char*>&view[0]
        try:
            if self._end > self._start:
                # Complete the held frame first, copying only the bytes it lacks; while
                # its header block is unfinished its length is unknown: take it all.
                take = n
                if self._hdr_len:
                    take = self._hdr_len + (self._clen if self._clen > 0 else 0)
                    take = min(take - (self._end - self._start), n)
                self._append(p, take)
                p += take
                n -= take
                try:
                    self._parse(out)
                except ProtocolError:
                    # Like an error anywhere else: every byte not yet framed stays held.
                    self._append(p, n)
                    raise
            if n:
                self._base = p
                self._start = 0
                self._end = n
                if self._share and type(data) is bytes:
                    self._data = <bytes>data
                try:
                    self._parse(out)
                finally:
                    self._data = None
                    self._keep_rest()
        except ProtocolError as exc:
            # Messages completed before the bad frame were received: hand them over.
            exc.messages = out
            self._error = exc
            raise
        return out

    cdef void _keep_rest(self) except *:
        """Copy the unframed end of the caller's bytes into our buffer."""
        cdef const char* rest = self._base + self._start
        cdef Py_ssize_t left = self._end - self._start
        self._base = self._buf
        self._start = 0
        self._end = 0
        if left:
            self._append(rest, left)

    cdef void _append(self, const char* data, Py_ssize_t n) except *:
        cdef Py_ssize_t held = self._end - self._start
        cdef Py_ssize_t need
        cdef char* grown
        if self._start:
            # Compact before growing: offsets that matter are frame-relative.
            if held:
                memmove(self._buf, self._buf + self._start, held)
            self._start = 0
            self._end = held
        need = held + n
        if need > self._cap:
            newcap = self._cap * 2 if self._cap else 65536
            while newcap < need:
                newcap *= 2
            grown = <char*>PyMem_Realloc(self._buf, newcap)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = newcap
        if n:
            memcpy(self._buf + self._end, data, n)
        self._end += n
        self._base = self._buf

    cdef int _find_header_end(self) except -1:
        """Resume the search for the blank line; set ``_hdr_len`` when found."""
        cdef const char* f = self._base + self._start
        cdef Py_ssize_t avail = self._end - self._start
        cdef Py_ssize_t i = self._scan
        cdef const char* hit
        cdef Py_ssize_t q
        while True:
            hit = <const char*>memchr(f + i, 10, avail - i) if i < avail else NULL
            if hit == NULL:
                self._scan = avail
                break
            q = hit - f + 1
            if q < avail and f[q] == 10:
                self._hdr_len = q + 1
                break
            if q + 1 < avail and f[q] == 13 and f[q + 1] == 10:
                self._hdr_len = q + 2
                break
            if q == avail or (q + 1 == avail and f[q] == 13):
                # The next line is not complete yet: look at this LF again next time.
                self._scan = q - 1
                break
            i = q
        if self._hdr_len:
            if self._hdr_len > self.max_header_size:
                self._fail(f"header block exceeds max_header_size {self.max_header_size}", f, avail)
            return 1
        if avail > self.max_header_size:
            self._fail(f"header block exceeds max_header_size {self.max_header_size}", f, avail)
        return 0

    cdef void _grow_out(self, Py_ssize_t lines) except *:
        cdef Py_ssize_t cap = self._outcap if self._outcap else 32
        cdef uint32_t* grown
        while cap < lines:
            cap *= 2
        grown = <uint32_t*>PyMem_Realloc(self._out, cap * _SLOT * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        self._out = grown
        self._outcap = cap

    cdef int _outer_headers(self) except -1:
        """Split the frame's own header lines; find Content-Length and Content-Type."""
        cdef const char* f = self._base + self._start
        cdef Py_ssize_t pos = 0, stop = self._hdr_len, le, ve, colon, vs
        cdef const char* nl
        cdef const char* c
        cdef uint32_t* s
        cdef Py_ssize_t clen = -1, v, first = -1, first_len = 0
        self._nout = 0
        self._ct_start = -1
        self._ct_len = 0
        self._has_event_name = False
        while pos < stop:
            nl = <const char*>memchr(f + pos, 10, stop - pos)
            le = nl - f
            ve = le - 1 if le > pos and f[le - 1] == 13 else le
            if ve == pos:
                break
            c = <const char*>memchr(f + pos, 58, ve - pos)
            if c == NULL:
                self._fail("header line without ':'", f + pos, ve - pos)
            colon = c - f
            vs = colon + 1
            if vs < ve and f[vs] == 32:
                vs += 1
            if self._nout == self._outcap:
                self._grow_out(self._nout + 1)
            s = self._out + self._nout * _SLOT
            s[0] = <uint32_t>pos
            s[1] = <uint32_t>(colon - pos)
            s[2] = <uint32_t>vs
            s[3] = <uint32_t>(ve - vs)
            self._nout += 1
            if _eq(f + pos, colon - pos, "Content-Length", 14):
                if first < 0:
                    first = vs
                    first_len = ve - vs
                elif not _eq(f + vs, ve - vs, f + first, first_len):
                    self._fail("two different frame Content-Length values", f + pos, ve - pos)
            elif _eq(f + pos, colon - pos, "Content-Type", 12):
                # The first Content-Type decides, as for every other reader of the frame.
                if self._ct_start < 0:
                    self._ct_start = vs
                    self._ct_len = ve - vs
            elif _eq(f + pos, colon - pos, "Event-Name", 10):
                self._has_event_name = True
            pos = le + 1
        if first >= 0:
            if not _is_digits(f + first, first_len):
                self._fail("frame Content-Length is not a decimal number", f, pos - 1)
            clen = _to_int(f + first, first_len, self.max_body_size)
            if clen < 0:
                self._fail(f"frame Content-Length {_number(f + first, first_len)} exceeds "
                           f"max_body_size {self.max_body_size}", f, pos - 1)
        self._clen = clen
        self._classify(f)
        return 0

    cdef void _classify(self, const char* f):
        cdef const char* t = f + self._ct_start
        cdef Py_ssize_t n = self._ct_len
        self._fmt = _F_NONE
        if self._ct_start < 0:
            self._kind = _K_UNKNOWN
        elif _eq(t, n, "text/event-plain", 16):
            self._kind = _K_EVENT
            self._fmt = _F_PLAIN
        elif _eq(t, n, "command/reply", 13):
            self._kind = _K_REPLY
        elif _eq(t, n, "api/response", 12):
            self._kind = _K_API
        elif _eq(t, n, "text/event-json", 15):
            self._kind = _K_EVENT
            self._fmt = _F_JSON
        elif _eq(t, n, "text/event-xml", 14):
            self._kind = _K_EVENT
            self._fmt = _F_XML
        elif _eq(t, n, "auth/request", 12):
            self._kind = _K_AUTH
        elif _eq(t, n, "log/data", 8):
            self._kind = _K_LOG
        elif _eq(t, n, "text/disconnect-notice", 22):
            self._kind = _K_NOTICE
        elif _eq(t, n, "text/rude-rejection", 19):
            self._kind = _K_RUDE
        else:
            self._kind = _K_UNKNOWN

    cdef int _parse(self, list out) except -1:
        cdef const char* f
        cdef Py_ssize_t avail, total
        while True:
            f = self._base + self._start
            avail = self._end - self._start
            if self._hdr_len == 0:
                # Blank lines between frames carry nothing; consume them.
                while avail and (f[0] == 10 or (avail > 1 and f[0] == 13 and f[1] == 10)):
                    total = 1 if f[0] == 10 else 2
                    f += total
                    avail -= total
                    self._start += total
                    self._offset += total
                if avail == 0 or (avail == 1 and f[0] == 13):
                    return 0
                if not self._find_header_end():
                    return 0
                self._outer_headers()
            total = self._hdr_len + (self._clen if self._clen > 0 else 0)
            if total > _LEN_MASK:
                # Line offsets are 31-bit; only an absurd max_body_size gets here.
                self._fail("frame larger than 2 GiB", f, self._hdr_len)
            if avail < total:
                return 0
            out.append(self._message(f, total))
            self._start += total
            self._offset += total
            self._hdr_len = 0
            self._scan = 0

    cdef ESLEvent _message(self, const char* f, Py_ssize_t total):
        cdef ESLEvent ev = ESLEvent.__new__(ESLEvent)
        cdef bytes payload
        ev.kind = self._kind
        if self._fmt == _F_PLAIN:
            ev.content_type = "text/event-plain"
            if self._data is not None:  # framed in place, inside the caller's chunk
                ev._raw = self._data
                ev._off = (f + self._hdr_len) - PyBytes_AS_STRING(self._data)
            else:
                ev._raw = PyBytes_FromStringAndSize(f + self._hdr_len, total - self._hdr_len)
            ev._size = total - self._hdr_len
            self._plain(ev)
            return ev
        ev.content_type = (_decode_bytes(f + self._ct_start, self._ct_len)
                           if self._ct_start >= 0 else "")
        if self._fmt == _F_JSON or self._fmt == _F_XML:
            payload = PyBytes_FromStringAndSize(f + self._hdr_len, total - self._hdr_len)
            if self._fmt == _F_JSON:
                d, body = _parse_json(payload, self._offset)
            else:
                d, body = _parse_xml(payload, self._offset)
            ev._dict = d
            ev._decoded = len(d)
            ev._set_body(body)
            return ev
        # Any other frame: its own headers are the message, its body the payload.
        ev._raw = PyBytes_FromStringAndSize(f, total)
        ev._size = total
        ev._lines = <uint32_t*>PyMem_Malloc((self._nout or 1) * _SLOT * sizeof(uint32_t))
        if ev._lines == NULL:
            raise MemoryError()
        memcpy(ev._lines, self._out, self._nout * _SLOT * sizeof(uint32_t))
        ev._nlines = self._nout
        ev._urlenc = self._kind == _K_REPLY and self._has_event_name
        if self._clen >= 0:
            ev._body_start = self._hdr_len
            ev._body_len = self._clen
        return ev

    cdef int _plain(self, ESLEvent ev) except -1:
        """Frame the inner block of a plain event (its outer body); index nothing.

        Where the header lines end, the inner Content-Length and the lines routing
        reads are found in one pass; the line index waits for a read that needs
        it (``ESLEvent._index_lines``). A body that does not match its inner
        Content-Length is still refused here: it is framing, and a reader must
        never see an event cut at the wrong byte.
        """
        cdef const char* p = ev._p()
        cdef Py_ssize_t n = ev._size
        cdef Py_ssize_t pos, clen = -1, vs, ve
        cdef genesis_block b
        genesis_scan_block(p, n, &b)
        if b.head < 0:
            self._fail("plain event without a complete inner header block", p, n)
        ev._urlenc = True
        ev._block_end = b.head
        ev._frame_offset = self._offset
        ev._en_pos = b.en
        ev._en_n = b.en_n
        ev._sub_pos = b.sub
        ev._sub_n = b.sub_n
        ev._uuid_pos = b.uid
        ev._uuid_n = b.uid_n
        pos = b.body
        if b.cl_n:
            vs = self._inner_length(p, b.cl, b.head, &ve)
            if b.cl_n > 1:
                self._same_lengths(p, b.head, vs, ve)
            # Excerpt: the header lines up to the last one's line feed, as for the
            # frame's own Content-Length.
            if not _is_digits(p + vs, ve - vs):
                self._fail("inner Content-Length is not a decimal number", p, b.head - 1)
            clen = _to_int(p + vs, ve - vs, self.max_body_size)
            if clen < 0:
                self._fail(f"inner Content-Length {_number(p + vs, ve - vs)} exceeds "
                           f"max_body_size {self.max_body_size}", p, b.head - 1)
            if n - pos != clen:
                self._fail(f"plain event body "
                           f"{'truncated' if n - pos < clen else 'followed by stray bytes'}: "
                           f"inner Content-Length {clen}, {n - pos} bytes", p + pos, n - pos)
            ev._body_start = pos
            ev._body_len = clen
        elif pos != n:
            self._fail("plain event has bytes after its headers but no inner Content-Length",
                       p + pos, n - pos)
        return 0

    cdef Py_ssize_t _inner_length(self, const char* p, Py_ssize_t line, Py_ssize_t stop,
                                  Py_ssize_t* end) noexcept:
        """Value of the ``Content-Length:`` line at ``line``: its start, its end in ``end``.

        Header lines end before ``stop`` (the blank line), so the line's LF is there.
        """
        cdef Py_ssize_t vs = line + 15
        cdef Py_ssize_t le = <const char*>memchr(p + line, 10, stop - line) - p
        cdef Py_ssize_t ve = le - 1 if p[le - 1] == 13 else le
        if vs < ve and p[vs] == 32:
            vs += 1
        end[0] = ve
        return vs

    cdef int _same_lengths(self, const char* p, Py_ssize_t stop, Py_ssize_t vs,
                           Py_ssize_t ve) except -1:
        """Every inner Content-Length line must repeat the first value (rare: a line walk)."""
        cdef Py_ssize_t pos = 0, le, lve, lvs
        cdef const char* nl
        while pos < stop:
            nl = <const char*>memchr(p + pos, 10, stop - pos)
            le = nl - p
            lve = le - 1 if le > pos and p[le - 1] == 13 else le
            if lve - pos >= 15 and memcmp(p + pos, b"Content-Length:", 15) == 0:
                lvs = pos + 15
                if lvs < lve and p[lvs] == 32:
                    lvs += 1
                if not _eq(p + lvs, lve - lvs, p + vs, ve - vs):
                    self._fail("two different inner Content-Length values", p + pos, lve - pos)
            pos = le + 1
        return 0


# ---------------------------------------------------------------------------
# Tracing attributes
# ---------------------------------------------------------------------------

cdef dict _snake_cache = {}


def snake_case(str name):
    """``Event-Subclass`` -> ``event_subclass``: OpenTelemetry attribute spelling."""
    cached = _snake_cache.get(name)
    if cached is not None:
        return cached
    result = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in name.lower())
    if len(_snake_cache) < 4096:
        _snake_cache[name] = result
    return result


cdef class HeaderFlattener:
    """Turns an event into span attributes, bounded by OpenTelemetry's attribute limit.

    A FreeSWITCH event carries ~75 headers and a recorded span costs the SDK tens of
    microseconds already, so the flattener makes one pass over a lazy event's lines
    and keeps nothing in the event: per line, the name's slot in the parser's name
    cache (a slot holds one name for the life of the process) leads to the attribute
    key (``event.header.<snake_case>``, or "not recorded" for Unique-ID and names
    outside the allowlist) computed once per flattener, and only recorded values are
    decoded. Values are what the SDK stores: ``str``, or a tuple of ``str`` for
    ``ARRAY::`` values and repeated headers. Headers whose names flatten to the same
    key (``Foo-Bar`` and ``foo_bar``) are merged into one tuple in header order.

    A header name met twice in one event must be merged in name order, which one
    pass over the lines cannot do; such an event (a re-typed COMMAND) takes the
    name-by-name path, as do events already decoded into a dict.
    """

    cdef object _allow
    cdef dict _keys
    # Per name cache slot: the attribute key of its name (a reference), Py_None for
    # "not recorded", NULL until met.
    cdef PyObject** _by_slot
    cdef public Py_ssize_t max_attributes

    def __cinit__(self):
        self._by_slot = <PyObject**>PyMem_Malloc(_NAME_CACHE_SIZE * sizeof(PyObject*))
        if self._by_slot == NULL:
            raise MemoryError()
        memset(self._by_slot, 0, _NAME_CACHE_SIZE * sizeof(PyObject*))

    def __init__(self, allowlist=None, Py_ssize_t max_attributes=128):
        self._allow = (None if allowlist is None
                       else frozenset([snake_case(name) for name in allowlist]))
        self._keys = {}
        self.max_attributes = max_attributes

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._by_slot != NULL:
            for i in range(_NAME_CACHE_SIZE):
                Py_XDECREF(self._by_slot[i])
            PyMem_Free(self._by_slot)

    cdef object _key(self, object header):
        """``event.header.<snake_case>`` for ``header``, or None when it is not recorded."""
        cdef PyObject* hit = PyDict_GetItem(self._keys, header)
        if hit != NULL:
            return <object>hit
        if header == "Unique-ID":
            key = None  # recorded as event.uuid
        else:
            snake = snake_case(header)
            key = (None if self._allow is not None and snake not in self._allow
                   else "event.header." + snake)
        # Header names come from the peer: bound what they can pin in memory.
        if len(self._keys) < 4096:
            self._keys[header] = key
        return key

    cdef inline PyObject* _slot_key(self, Py_ssize_t slot):
        """``_key`` of the name in cache slot ``slot`` (borrowed; the table owns it)."""
        cdef PyObject* key = self._by_slot[slot]
        if key == NULL:
            found = self._key(<object>_name_cache[slot].text)
            Py_INCREF(found)
            key = <PyObject*>found
            self._by_slot[slot] = key
        return key

    def flatten(self, ESLEvent event):
        """``event.name``, ``event.uuid``, then ``event.header.<snake_case>`` in wire order."""
        cdef dict attrs
        cdef Py_ssize_t limit = self.max_attributes
        if limit <= 0:
            return {}
        if event._dict is None and self._allow is None:
            # Every line is recorded: one allocation for the whole table.
            event._need_lines()
            attrs = _PyDict_NewPresized(min(limit, event._nlines + 2))
        else:
            attrs = {}
        name = event.name
        if name is not None:
            attrs["event.name"] = name
        uuid = event._lookup("Unique-ID", None)
        if uuid is not None and len(attrs) < limit:
            attrs["event.uuid"] = _attribute(uuid)
        if event._dict is not None:
            self._add_dict(<dict>event._dict, attrs, limit - len(attrs))
        elif not self._add_lines(event, attrs, limit - len(attrs)):
            self._add_names(event, attrs, limit - len(attrs))
        return attrs

    cdef bint _add_lines(self, ESLEvent event, dict attrs, Py_ssize_t room) except -1:
        """Add the recorded lines of a lazy message to ``attrs`` in one pass.

        A repeated name is merged into its first line's entry, which is name order.
        False (and ``attrs`` as it was) when that order cannot be kept this way:
        two distinct names flattening to one key, or a name the cache refuses.
        Like ``ESLEvent._list``, the cache slots of the lines ahead are prefetched.
        """
        cdef const char* base
        cdef uint32_t* s
        cdef Py_ssize_t i, j, n, slot, size, mark = len(attrs)
        cdef PyObject* key
        cdef PyObject* old
        cdef uint64_t met[_MET_WORDS]
        cdef bint repeated
        cdef bint urlenc = event._urlenc
        # Without an allowlist every value is decoded: prefetch its slot too.
        cdef bint values_ahead = urlenc and self._allow is None
        cdef uint64_t name_h[_RING]
        cdef uint64_t value_h[_RING]
        event._need_lines()
        base = event._p()
        n = event._nlines
        memset(met, 0, sizeof(met))
        for i in range(-_AHEAD, n):
            j = i + _AHEAD
            if j < n:
                _hash_ahead(base, event._lines + j * _SLOT, j, name_h, value_h, values_ahead)
                __builtin_prefetch(&self._by_slot[name_h[j & (_RING - 1)] & (_NAME_CACHE_SIZE - 1)])
            j = i + _AHEAD // 2
            if 0 <= j < n:
                # The slots prefetched above have arrived: prefetch the objects they point
                # to (a dict insert touches both key and value).
                __builtin_prefetch(self._by_slot[name_h[j & (_RING - 1)] & (_NAME_CACHE_SIZE - 1)])
                if values_ahead:
                    __builtin_prefetch(
                        _value_cache[value_h[j & (_RING - 1)] & (_VALUE_CACHE_SIZE - 1)].text)
            if i < 0:
                continue
            s = event._lines + i * _SLOT
            slot = _name_slot(base + s[0], s[1], name_h[i & (_RING - 1)])
            if slot < 0:
                return self._restart(attrs, mark)
            key = self._slot_key(slot)
            repeated = _met(met, slot)
            if key == <PyObject*>None:
                continue
            if room <= 0:
                old = PyDict_GetItem(attrs, <object>key)
                if old == NULL:
                    continue
            value = _attribute(
                _value_ahead(base, s, urlenc, values_ahead, value_h[i & (_RING - 1)]))
            event._count_line(s)
            # One probe inserts a new key or finds the entry a repeat merges into.
            size = len(attrs)
            old = PyDict_SetDefault(attrs, <object>key, value)
            if len(attrs) != size:
                room -= 1
            elif repeated:
                PyDict_SetItem(attrs, <object>key, _join_attribute(<object>old, value))
            else:
                return self._restart(attrs, mark)
        return True

    cdef bint _restart(self, dict attrs, Py_ssize_t mark):
        """Drop what a refused one-pass flatten added after the first ``mark`` entries."""
        for key in list(attrs)[mark:]:
            del attrs[key]
        return False

    cdef void _add_dict(self, dict headers, dict attrs, Py_ssize_t room) except *:
        """Add a decoded message's headers to ``attrs``, name by name."""
        for name, value in headers.items():
            key = self._key(name)
            if key is not None:
                room -= _add(attrs, key, _attribute(value), room > 0)

    cdef void _add_names(self, ESLEvent event, dict attrs, Py_ssize_t room) except *:
        """Add a lazy message's recorded headers to ``attrs``, name by name.

        The lines are grouped by name first (one pass), so a hostile event of many
        repeated or colliding names costs linear time; only recorded values are
        decoded, each name counted once in ``decoded``.
        """
        cdef const char* base = event._p()
        cdef uint32_t* s
        cdef Py_ssize_t i
        cdef dict lines = {}
        cdef list at
        for i in range(event._nlines):
            s = event._lines + i * _SLOT
            name = _name_str(base + s[0], s[1])
            found = lines.get(name)
            if found is None:
                lines[name] = [i]
            else:
                (<list>found).append(i)
        for name, found in lines.items():
            key = self._key(name)
            if key is None or (room <= 0 and PyDict_GetItem(attrs, key) == NULL):
                continue
            at = <list>found
            value = _attribute(event._value_at(at[0]))
            event._count_line(event._lines + <Py_ssize_t>at[0] * _SLOT)
            for i in at[1:]:
                value = _join_attribute(value, _attribute(event._value_at(i)))
                (event._lines + i * _SLOT)[3] |= _SEEN
            room -= _add(attrs, key, value, room > 0)


cdef object _attribute(object value):
    """A header value as an attribute value: a list becomes a tuple, as the SDK stores it."""
    return PyList_AsTuple(value) if type(value) is list else value


cdef object _join_attribute(object old, object value):
    """Two values of one attribute key, in header order, as one tuple."""
    return ((<tuple>old if type(old) is tuple else (old,))
            + (<tuple>value if type(value) is tuple else (value,)))


cdef Py_ssize_t _add(dict attrs, object key, object value, bint room) except -1:
    """Add ``value`` under ``key`` or merge it into the entry there; 1 for a new entry."""
    cdef PyObject* old = PyDict_GetItem(attrs, key)
    if old == NULL:
        if not room:
            return 0
        attrs[key] = value
        return 1
    attrs[key] = _join_attribute(<object>old, value)
    return 0


# ---------------------------------------------------------------------------
# Serializer
# ---------------------------------------------------------------------------

cdef bytes _UNSAFE = b' "#%&+:;<=>?@[\\]^`{|}'
cdef char* _HEX = "0123456789ABCDEF"


def encode_value(str value):
    """FreeSWITCH's header-value encoding: controls, non-ASCII and URL syntax as %XX."""
    cdef bytes raw = value.encode("utf-8", "surrogateescape")
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i, o = 0
    cdef const char* unsafe = PyBytes_AS_STRING(_UNSAFE)
    cdef Py_ssize_t nunsafe = PyBytes_GET_SIZE(_UNSAFE)
    cdef bytes out
    cdef char* w
    cdef unsigned char c
    out = PyBytes_FromStringAndSize(NULL, n * 3)
    w = PyBytes_AS_STRING(out)
    for i in range(n):
        c = p[i]
        if c < 32 or c > 126 or memchr(unsafe, c, nunsafe) != NULL:
            w[o] = 37
            w[o + 1] = _HEX[c >> 4]
            w[o + 2] = _HEX[c & 15]
            o += 3
        else:
            w[o] = <char>c
            o += 1
    return w[:o].decode("ascii")


cdef void _check_name(str name, str fmt) except *:
    if name == "Content-Length" or name == "_body":
        raise ValueError(f"{name!r} is framing, not an event header")
    if fmt == "plain":
        if not name or ":" in name or "\n" in name or "\r" in name:
            raise ValueError(f"header name {name!r} cannot be written as a plain header line")
    elif fmt == "xml":
        if not name or any(ch in "<>/&" or ch.isspace() for ch in name):
            raise ValueError(f"header name {name!r} cannot be written as an XML element name")


cdef str _array_value(str name, object value, str fmt):
    """The single string a value is written as: lists become ``ARRAY::a|:b``."""
    if type(value) is str:
        if (<str>value).startswith(_ARRAY_PREFIX):
            raise ValueError(f"header {name!r}: a str value starting with 'ARRAY::' "
                             "would read back as a list")
        return value
    if not value:
        raise ValueError(f"header {name!r}: an empty list cannot be written in {fmt} form")
    if any(_ARRAY_SEP in item for item in value):
        raise ValueError(f"header {name!r}: list items containing '|:' cannot be written "
                         f"in {fmt} form")
    return _ARRAY_PREFIX + _ARRAY_SEP.join(value)


cdef str _json_string(str s):
    """cJSON's escaping: quotes, backslash, controls; everything else raw."""
    return '"' + s.translate(_JSON_ESCAPES) + '"'


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_JSON_ESCAPES.update({34: '\\"', 92: "\\\\", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r",
                      9: "\\t"})


cdef str _xml_escape(str s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def serialize_event(event, str fmt="plain", body=None):
    """The complete frame FreeSWITCH would write for ``event`` in ``fmt``.

    Raises ValueError for a header the format cannot carry so that it would
    read back differently (a ``str`` starting with ``ARRAY::``, a name with ``:``).
    """
    cdef list parts
    cdef bytes payload
    cdef object raw_body
    if fmt != "plain" and fmt != "json" and fmt != "xml":
        raise ValueError(f"unknown event format {fmt!r}: expected plain, json or xml")
    if body is None:
        raw_body = event.raw_body if isinstance(event, ESLEvent) else None
    elif isinstance(body, str):
        raw_body = (<str>body).encode("utf-8", "surrogateescape")
    elif isinstance(body, bytes):
        raw_body = body
    else:
        raise TypeError(f"body must be str, bytes or None, not {type(body).__name__}")
    if fmt == "plain":
        parts = []
        for k, v in event.items():
            _check_name(k, fmt)
            parts.append(f"{k}: {encode_value(_array_value(k, v, fmt))}\n")
        payload = "".join(parts).encode("utf-8", "surrogateescape")
        if raw_body is None:
            payload += b"\n"
        else:
            payload += b"Content-Length: %d\n\n" % len(raw_body) + raw_body
    elif fmt == "json":
        parts = []
        for k, v in event.items():
            _check_name(k, fmt)
            if type(v) is str:
                enc = _json_string(_array_value(k, v, fmt))
            else:
                enc = "[" + ",".join([_json_string(x) for x in v]) + "]"
            parts.append(_json_string(k) + ":" + enc)
        if raw_body is not None:
            parts.append(f'"Content-Length":"{len(raw_body)}","_body":'
                         + _json_string(raw_body.decode("utf-8", "surrogateescape")))
        payload = ("{" + ",".join(parts) + "}").encode("utf-8", "surrogateescape")
    else:
        parts = ["<event>\n  <headers>"]
        for k, v in event.items():
            _check_name(k, fmt)
            # FreeSWITCH repeats the element of a multi-valued header; a one-item
            # list would then read back as a str, so it keeps the ARRAY:: form.
            items = v if type(v) is list and len(v) > 1 else [_array_value(k, v, fmt)]
            for item in items:
                parts.append(f"\n    <{k}>{encode_value(item)}</{k}>")
        parts.append("\n  </headers>")
        if raw_body is not None:
            text = _xml_escape(raw_body.decode("utf-8", "surrogateescape"))
            parts.append(f"\n  <Content-Length>{len(raw_body)}</Content-Length>")
            # FreeSWITCH's XML writer indents a closing tag that follows a newline.
            parts.append(f"\n  <body>{text}{'  ' if text.endswith(chr(10)) else ''}</body>")
        # FreeSWITCH ends the document with a newline (see xml.bin).
        parts.append("\n</event>\n")
        payload = "".join(parts).encode("utf-8", "surrogateescape")
    return b"Content-Length: %d\nContent-Type: text/event-%s\n\n" % (
        len(payload), fmt.encode()) + payload
