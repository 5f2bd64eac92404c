#include "thread_pool.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "errors.hpp"

namespace slicert {
namespace {

int default_threads() {
  if (const char* env = std::getenv("SLICERT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return std::min(n, 256);
  }
  unsigned hw = std::thread::hardware_concurrency();
  // Edge devices share their cores with acquisition and UI: cap the default, callers raise it.
  return static_cast<int>(std::max(1u, std::min(hw == 0 ? 1u : hw, 8u)));
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads), pid_(getpid()) {}

  // Never destroyed: a process may exit (or fork) while workers are parked, and joining them from a
  // static destructor during interpreter shutdown is a classic hang.
  pid_t pid() const { return pid_; }
  int threads() const { return threads_; }

  void set_threads(int n) {
    std::lock_guard<std::mutex> call(call_mutex_);
    stop_workers();
    threads_ = n;
  }

  void run(int n, int min_chunk, const std::function<void(int, int)>& fn) {
    std::lock_guard<std::mutex> call(call_mutex_);
    const int chunk = std::max(1, std::max(min_chunk, n / (threads_ * 4)));
    const int n_chunks = (n + chunk - 1) / chunk;
    const int helpers = std::min(threads_, n_chunks) - 1;
    if (helpers <= 0) {
      fn(0, n);
      return;
    }
    start_workers(threads_ - 1);
    {
      std::lock_guard<std::mutex> lk(mutex_);
      job_ = &fn;
      job_n_ = n;
      job_chunk_ = chunk;
      next_.store(0);
      active_ = helpers;
      wanted_ = helpers;
      error_ = nullptr;
      ++generation_;
    }
    cv_work_.notify_all();
    work_on_job();
    std::unique_lock<std::mutex> lk(mutex_);
    cv_done_.wait(lk, [&] { return active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work_on_job() {
    for (;;) {
      const int begin = next_.fetch_add(job_chunk_);
      if (begin >= job_n_) return;
      try {
        (*job_)(begin, std::min(job_n_, begin + job_chunk_));
      } catch (...) {
        std::lock_guard<std::mutex> lk(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(job_n_);
      }
    }
  }

  void worker() {
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lk(mutex_);
    for (;;) {
      cv_work_.wait(lk, [&] { return stop_ || (generation_ != seen && wanted_ > 0); });
      if (stop_) return;
      seen = generation_;
      --wanted_;
      lk.unlock();
      work_on_job();
      lk.lock();
      if (--active_ == 0) cv_done_.notify_one();
    }
  }

  void start_workers(int count) {
    if (static_cast<int>(workers_.size()) == count) return;
    stop_workers();
    stop_ = false;
    for (int i = 0; i < count; ++i) workers_.emplace_back([this] { worker(); });
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mutex_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
  }

  int threads_;
  pid_t pid_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  int job_n_ = 0, job_chunk_ = 1, active_ = 0, wanted_ = 0;
  std::atomic<int> next_{0};
  unsigned long generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

std::mutex g_pool_mutex;
Pool* g_pool = nullptr;

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  // After fork() the child inherits the pool object but none of its threads: abandon it (leak, its
  // mutexes may be held by threads that no longer exist) and start afresh.
  if (g_pool == nullptr || g_pool->pid() != getpid()) {
    const int n = g_pool ? g_pool->threads() : default_threads();
    g_pool = new Pool(n);
  }
  return *g_pool;
}

}  // namespace

void parallel_for(int n, int min_chunk, const std::function<void(int, int)>& fn) {
  if (n <= 0) return;
  pool().run(n, min_chunk, fn);
}

void set_num_threads(int n) {
  if (n < 1 || n > 256) throw InputError("set_num_threads: n must be in [1, 256], got " + std::to_string(n));
  pool().set_threads(n);
}

int get_num_threads() { return pool().threads(); }

}  // namespace slicert
