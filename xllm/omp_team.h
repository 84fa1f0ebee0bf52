/* OpenMP worker threads and process signals.
 *
 * A signal sent to the process (Ctrl-C's SIGINT, a SIGTERM) goes to any one thread that does
 * not block it.  CPython runs handlers only on its main thread and wakes a main thread blocked
 * in read() only if the signal interrupted that very thread: a SIGINT that lands on an idle
 * OpenMP worker leaves `input()` blocked for good.  So workers block every asynchronous
 * signal; the synchronous ones (a fault in the worker itself) stay deliverable.
 */
#ifndef XLLM_OMP_TEAM_H
#define XLLM_OMP_TEAM_H

#include <signal.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline void xllm_block_worker_signals_here(void) {
    sigset_t s;
    sigfillset(&s);
    sigdelset(&s, SIGSEGV);
    sigdelset(&s, SIGBUS);
    sigdelset(&s, SIGFPE);
    sigdelset(&s, SIGILL);
    sigdelset(&s, SIGTRAP);
    sigdelset(&s, SIGABRT);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
}

/* Make sure the calling thread's team of n threads has its workers (not the caller) blocking
 * asynchronous signals.  libgomp keeps one pool of workers per thread that forks a team and
 * reuses it, so each calling thread needs this once per larger team size: the cost is one
 * parallel region the first time a thread forks n > any earlier n. */
static inline void xllm_team_block_signals(int n) {
#ifdef _OPENMP
    static __thread int blocked_upto = 1;
    if (n <= blocked_upto)
        return;
    #pragma omp parallel num_threads(n)
    {
        if (omp_get_thread_num() != 0)
            xllm_block_worker_signals_here();
    }
    blocked_upto = n;
#else
    (void)n;
#endif
}

#endif
