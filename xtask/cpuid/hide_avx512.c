/*
 * hide_avx512.so: an LD_PRELOAD library that makes the CPU look as if it had no AVX-512 (and no
 * AMX) to the process that loads it, so that every runtime-dispatched kernel in it (gemm's and
 * metarep-kernels' in Rust, ATen's, MKL's and oneDNN's in PyTorch) takes its AVX2 path.
 * `cargo xtask bench NAME --simd avx2` builds it and runs the benchmark under it: a stand-in,
 * on an AVX-512 machine, for a machine without AVX-512 (same cores, caches and clocks).
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, x86 CPUs and VMs that list
 * `cpuid_fault` in /proc/cpuinfo) turns every CPUID instruction of the thread into SIGSEGV; the
 * handler below runs the real CPUID with faulting briefly off, clears the AVX-512 and AMX
 * feature bits of leaf 7, writes the result into the interrupted registers and steps over the
 * 2-byte instruction. Threads inherit the setting; execve resets it, and the constructor of the
 * next program that loads this library (LD_PRELOAD is inherited) sets it again.
 *
 * What it cannot hide: the dynamic loader reads CPUID before any constructor runs, so glibc's
 * own string functions are chosen on the real CPU (the caller also sets GLIBC_TUNABLES to
 * exclude their AVX-512 variants), and XGETBV still reports the AVX-512 register state as
 * enabled (dispatchers require the CPUID bit as well, so they do not use it).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* Leaf 7 sub-leaf 0 feature bits cleared. EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27,
 * CD 28, BW 30, VL 31. ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14. EDX: 4VNNIW 2,
 * 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25. */
#define EBX7_MASK ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
#define ECX7_MASK ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
#define EDX7_MASK ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* Leaf 7 sub-leaf 1 EAX: AVX512-BF16 5. */
#define EAX71_MASK (1u << 5)

static struct sigaction previous;

/* CPUID faulting on (1) or off (0) for the calling thread. */
static long set_faulting(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)info;
    greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)r[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) {
        uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
        set_faulting(0);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_faulting(1);
        if (leaf == 7 && sub == 0) {
            b &= ~EBX7_MASK;
            c &= ~ECX7_MASK;
            d &= ~EDX7_MASK;
        } else if (leaf == 7 && sub == 1) {
            a &= ~EAX71_MASK;
        }
        r[REG_RAX] = a;
        r[REG_RBX] = b;
        r[REG_RCX] = c;
        r[REG_RDX] = d;
        r[REG_RIP] += 2;
        return;
    }
    /* A real fault: hand it to whatever handled SIGSEGV before (usually the default: a crash). */
    sigaction(SIGSEGV, &previous, NULL);
    raise(sig);
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous);
    if (set_faulting(1) != 0) {
        perror("hide_avx512: arch_prctl(ARCH_SET_CPUID) (CPUID faulting unavailable)");
    }
}
