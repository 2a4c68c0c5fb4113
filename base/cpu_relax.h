// File: base/cpu_relax.h
//
// CpuRelax(): the body of a spin-wait loop (the kernel's cpu_relax()).
#ifndef PAGEPOOL_BASE_CPU_RELAX_H_
#define PAGEPOOL_BASE_CPU_RELAX_H_

namespace pagepool::base {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace pagepool::base

#endif  // PAGEPOOL_BASE_CPU_RELAX_H_
