// A small persistent thread pool for the CPU kernels: workers are created once (lazily) and park on
// a condition variable between calls, so a call costs a wake-up, never a thread creation.
#pragma once
#include <functional>

namespace slicert {

// Runs fn(begin, end) over [0, n) split into chunks; the calling thread works too. Exceptions thrown
// by fn are rethrown in the caller (the first one wins). Safe to call from several threads at once
// (calls are serialized) and after fork() (the child gets a fresh pool).
void parallel_for(int n, int min_chunk, const std::function<void(int, int)>& fn);

// Total threads used by parallel_for, including the caller (>= 1).
void set_num_threads(int n);
int get_num_threads();

}  // namespace slicert
