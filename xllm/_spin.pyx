# cython: language_level=3
"""How long one spin of an idle OpenMP thread takes on this CPU.

libgomp's idle threads spin GOMP_SPINCOUNT times (an atomic load and a `pause` each) before
they sleep, and the runtime reads the count once, when it loads: xllm/__init__.py sets it
from this measurement before any OpenMP extension is imported.  So this module is built
without OpenMP (setup.py) and must not import anything that links it.
"""

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #if defined(__x86_64__) || defined(__i386__)
    #include <immintrin.h>
    #define XLLM_CPU_RELAX() _mm_pause()
    #elif defined(__aarch64__)
    #define XLLM_CPU_RELAX() __asm__ volatile("yield" ::: "memory")
    #else
    #define XLLM_CPU_RELAX() __asm__ volatile("" ::: "memory")
    #endif

    /* ns per iteration of libgomp's spin loop (do_spin: a relaxed load of the flag, then
     * cpu_relax), the fastest of `rounds` runs of n (a preempted run only reads slower). */
    static double xllm_spin_ns(int n, int rounds) {
        static volatile int flag = 0;
        double best = -1.0;
        for (int r = 0; r < rounds; r++) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (int i = 0; i < n; i++) {
                if (__atomic_load_n(&flag, __ATOMIC_RELAXED) != 0) break;
                XLLM_CPU_RELAX();
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            const double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / n;
            if (best < 0 || ns < best) best = ns;
        }
        return best;
    }
    """
    double xllm_spin_ns(int n, int rounds) nogil


def spin_ns(int n=2000, int rounds=5):
    """Nanoseconds per spin of an idle OpenMP thread (the fastest of `rounds` runs of n)."""
    if n < 1 or rounds < 1:
        raise ValueError(f"spin_ns: n and rounds must be >= 1, got n={n}, rounds={rounds}")
    return xllm_spin_ns(n, rounds)
