# cython: language_level=3
"""The allreduce the decoder step calls (xllm_allreduce_fn in _kernels.pxd), over MPI.

Nothing here includes mpi.h or links libmpi: `MpiAllreduce` is given, at run time, the
address of the loaded library's MPI_Allreduce and the handles of a communicator, MPI_FLOAT
and MPI_SUM (mpi4py: MPI._handleof).  MPI handles are ints in MPICH's ABI and pointers in
Open MPI's and the MPI-5 standard ABI, so the call goes through one of two prototypes chosen
by the handle size.  No Python runs inside a step: the kernels call `allreduce_sum` directly.
"""
from libc.stdint cimport intptr_t, uintptr_t, int64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

ctypedef int (*allreduce_int_handles)(const void *, void *, int, int, int, int) noexcept nogil
ctypedef int (*allreduce_ptr_handles)(const void *, void *, int, void *, void *, void *) noexcept nogil

cdef struct Context:
    void *fn                # MPI_Allreduce
    intptr_t comm, dtype, op
    int handle_bytes        # sizeof(MPI_Comm): 4 (MPICH) or 8 (Open MPI, MPI ABI)
    float *send             # copy of the buffer (no MPI_IN_PLACE: its value is not ABI-portable)
    int capacity            # floats `send` holds
    int error               # first non-zero MPI return code
    int64_t calls
    int64_t bytes           # bytes each rank contributed
    double seconds


cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef void allreduce_sum(float *buf, int n, void *ctx) noexcept nogil:
    cdef Context *c = <Context *>ctx
    cdef double t0 = now()
    cdef int rc
    if n > c.capacity:
        c.error = -1
        return
    memcpy(c.send, buf, <size_t>n * sizeof(float))
    if c.handle_bytes == 4:
        rc = (<allreduce_int_handles>c.fn)(c.send, buf, n, <int>c.dtype, <int>c.op, <int>c.comm)
    else:
        rc = (<allreduce_ptr_handles>c.fn)(c.send, buf, n, <void *>c.dtype, <void *>c.op, <void *>c.comm)
    if rc != 0 and c.error == 0:
        c.error = rc
    c.calls += 1
    c.bytes += <int64_t>n * sizeof(float)
    c.seconds += now() - t0


cdef class MpiAllreduce:
    """The context of `allreduce_sum` for one communicator; `hook` is what
    Decoder.set_allreduce takes."""
    cdef Context *ctx

    def __cinit__(self, uintptr_t fn, intptr_t comm, intptr_t dtype, intptr_t op, int handle_bytes,
                  int capacity):
        if fn == 0:
            raise ValueError("MPI_Allreduce address is 0")
        if handle_bytes not in (4, 8):
            raise ValueError(f"MPI handle size {handle_bytes}, expected 4 or 8 bytes")
        if capacity < 1:
            raise ValueError(f"capacity = {capacity}, expected >= 1")
        self.ctx = <Context *>malloc(sizeof(Context))
        if self.ctx == NULL:
            raise MemoryError()
        self.ctx.send = <float *>malloc(<size_t>capacity * sizeof(float))
        if self.ctx.send == NULL:
            free(self.ctx)
            self.ctx = NULL
            raise MemoryError()
        self.ctx.fn = <void *>fn
        self.ctx.comm = comm
        self.ctx.dtype = dtype
        self.ctx.op = op
        self.ctx.handle_bytes = handle_bytes
        self.ctx.capacity = capacity
        self.ctx.error = 0
        self.ctx.calls = 0
        self.ctx.bytes = 0
        self.ctx.seconds = 0.0

    def __dealloc__(self):
        if self.ctx != NULL:
            free(self.ctx.send)
            free(self.ctx)

    @property
    def hook(self):
        """(function address, context address) for Decoder.set_allreduce."""
        return <uintptr_t>&allreduce_sum, <uintptr_t>self.ctx

    def sum(self, float[::1] buf):
        """Allreduce `buf` in place through the same C path (for tests and warm-up)."""
        with nogil:
            allreduce_sum(&buf[0], buf.shape[0], self.ctx)
        self.check()

    def check(self):
        """RuntimeError if any call failed (an MPI error code, or a buffer over capacity)."""
        if self.ctx.error == -1:
            raise RuntimeError(f"allreduce of more than {self.ctx.capacity} floats (the buffer's capacity)")
        if self.ctx.error:
            raise RuntimeError(f"MPI_Allreduce failed with error code {self.ctx.error}")

    def stats(self, bint reset=False):
        """{'calls', 'bytes', 'seconds'} since the last reset."""
        out = {"calls": self.ctx.calls, "bytes": self.ctx.bytes, "seconds": self.ctx.seconds}
        if reset:
            self.ctx.calls = 0
            self.ctx.bytes = 0
            self.ctx.seconds = 0.0
        return out
