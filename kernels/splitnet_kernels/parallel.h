// A persistent worker pool for splitting one call across cores. The calling thread takes part,
// so a call on n threads wakes n - 1 workers. One call uses the pool at a time; a call that
// finds it busy (another Python thread is inside) runs its tasks on its own thread, which keeps
// concurrent callers from queueing behind each other or oversubscribing the cores.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "build.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace splitnet {

class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this] { work(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int size() const { return static_cast<int>(threads_.size()) + 1; }

  // Runs task(t) for every t in [0, n_tasks) and returns when all have finished.
  void run(int n_tasks, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (n_tasks <= 1 || threads_.empty() || !busy.owns_lock()) {
      for (int t = 0; t < n_tasks; ++t) task(t);
      return;
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // A worker still inside the previous call's drain() must leave before the counters reset.
      all_done_.wait(lock, [&] { return active_ == 0; });
      task_ = &task;
      n_tasks_ = n_tasks;
      next_.store(0);
      done_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    const int finished = drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_ += finished;
    all_done_.wait(lock, [&] { return done_ == n_tasks_ && active_ == 0; });
    task_ = nullptr;
  }

 private:
  int drain() {
    int finished = 0;
    for (int t = next_.fetch_add(1); t < n_tasks_; t = next_.fetch_add(1)) {
      (*task_)(t);
      ++finished;
    }
    return finished;
  }

  void work() {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        ++active_;
      }
      const int finished = drain();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done_ += finished;
        --active_;
      }
      all_done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex busy_;   // held by the one call using the pool
  std::mutex mutex_;  // guards the fields below
  std::condition_variable wake_, all_done_;
  const std::function<void(int)>* task_ = nullptr;
  int n_tasks_ = 0;
  int done_ = 0;
  int active_ = 0;  // workers inside drain()
  std::atomic<int> next_{0};
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
};

inline int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// The process-wide pool, made on first use with one worker per extra core. A forked child
// inherits the pool's memory but not its threads, so the child makes a new one (the old one is
// left behind, never destroyed, since its threads do not exist there).
inline std::atomic<ThreadPool*>& pool_slot() {
  static std::atomic<ThreadPool*> slot{nullptr};
  return slot;
}

inline ThreadPool& default_pool() {
  ThreadPool* pool = pool_slot().load(std::memory_order_acquire);
  if (pool != nullptr) return *pool;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  pool = pool_slot().load(std::memory_order_acquire);
  if (pool == nullptr) {
#if defined(__unix__) || defined(__APPLE__)
    static const int registered = pthread_atfork(nullptr, nullptr, [] { pool_slot().store(nullptr); });
    (void)registered;
#endif
    pool = new ThreadPool(hardware_threads() - 1);  // lives as long as the process
    pool_slot().store(pool, std::memory_order_release);
  }
  return *pool;
}

// Splits [0, n) into at most `threads` chunks of at least `min_chunk` items (aligned to
// `granule`) and runs body(task, begin, end) on each, in parallel when there is more than one.
template <class Body>
void parallel_chunks(index_t n, int threads, index_t min_chunk, index_t granule, Body&& body) {
  index_t tasks = std::max<index_t>(1, std::min<index_t>(threads, n / std::max<index_t>(min_chunk, 1)));
  if (tasks <= 1) {
    body(0, index_t{0}, n);
    return;
  }
  index_t chunk = (n + tasks - 1) / tasks;
  chunk = (chunk + granule - 1) / granule * granule;
  tasks = (n + chunk - 1) / chunk;
  const std::function<void(int)> task = [&](int t) {
    const index_t begin = t * chunk;
    body(t, begin, std::min(n, begin + chunk));
  };
  default_pool().run(static_cast<int>(tasks), task);
}

}  // namespace splitnet
