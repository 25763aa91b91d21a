// ThreadSanitizer cannot see synchronisation inside libraries that are not built with it
// (ZeroMQ handing a frame from one thread to another, libgomp's fork and join). These state it:
// everything a thread did before tsan_release(x) happens before everything another thread
// does after a later tsan_acquire(x). Without ThreadSanitizer they compile to nothing.
#pragma once

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace shoal {

#if defined(__SANITIZE_THREAD__)
inline void tsan_release(void* addr) { __tsan_release(addr); }
inline void tsan_acquire(void* addr) { __tsan_acquire(addr); }
#else
inline void tsan_release(void*) {}
inline void tsan_acquire(void*) {}
#endif

}  // namespace shoal
