// segml/core/thread_pool.hpp: the worker threads behind parallel_for (segml's own, not OpenMP's).
//
// Contract: ThreadPool::instance().run(n, task, ctx) calls task(ctx, t) for t = 0 .. n-1, t = 0 on
// the calling thread and the others on pool workers, and returns when all n calls have returned.
// The first exception thrown by any call is rethrown on the caller once every call has finished
// (the workers may be reading the caller's stack until then). Calls from several threads at once
// take turns (one mutex), so each call has the whole pool and a thread count fixes the result.
// A call made from inside a task (in_parallel()) is not the pool's business: parallel_for then
// runs serially.
//
// Why not OpenMP: how its idle threads wait is fixed when the runtime loads (OMP_WAIT_POLICY /
// GOMP_SPINCOUNT are read before main), and its default spins for milliseconds. On an idle
// machine that is the fastest choice; on a busy one (a laptop with a browser open, a CI runner)
// a spinning thread burns the time slice the thread it waits for needs, and segml ran several
// times slower. This pool waits the way the load asks for:
//   - WaitPolicy::automatic (default): after a region, a worker spins for spin_us() microseconds
//     (default 100: the gaps between the regions of one forward pass are shorter), then sleeps on a
//     futex (std::atomic::wait). The caller waits for the workers the same way. On an idle machine
//     the next region finds every worker still spinning; on a busy one a worker gives its core back
//     after 0.1 ms instead of several.
//   - WaitPolicy::passive: sleep at once (OMP_WAIT_POLICY=passive).
//   - WaitPolicy::active: never sleep (OMP_WAIT_POLICY=active).
// The policy comes from SEGML_WAIT_POLICY, else OMP_WAIT_POLICY (passive | active | auto), the
// spin from SEGML_SPIN_US; set_wait_policy() changes both at run time.
//
// Workers are created on first use, as many as the largest n asked for minus one, and live until
// the process ends (they are never joined: a pool destroyed during static destruction could not
// serve a destructor that still runs a kernel). After fork() the child gets a fresh pool.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "segml/core/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace segml {

enum class WaitPolicy { automatic, passive, active };

namespace detail {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

inline int64_t process_id() {
#if defined(__unix__) || defined(__APPLE__)
  return static_cast<int64_t>(::getpid());
#else
  return 0;
#endif
}

// Whether this thread is running a pool task (then nested parallel loops run serially).
inline bool& in_pool_task() {
  thread_local bool inside = false;
  return inside;
}

struct WaitSettings {
  std::atomic<int> policy{static_cast<int>(WaitPolicy::automatic)};
  std::atomic<int64_t> spin_ns{100'000};

  WaitSettings() {
    auto lower = [](std::string s) {
      for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      return s;
    };
    const char* p = std::getenv("SEGML_WAIT_POLICY");
    if (!p || !*p) p = std::getenv("OMP_WAIT_POLICY");
    if (p) {
      const std::string v = lower(p);
      if (v == "passive") policy = static_cast<int>(WaitPolicy::passive);
      if (v == "active") policy = static_cast<int>(WaitPolicy::active);
    }
    if (const char* s = std::getenv("SEGML_SPIN_US")) {
      char* end = nullptr;
      const long long us = std::strtoll(s, &end, 10);
      if (end != s && *end == '\0' && us >= 0 && us <= 1'000'000) spin_ns = us * 1000;
    }
  }
};

inline WaitSettings& wait_settings() {
  static WaitSettings s;
  return s;
}

// Waits until v != old: spins (bounded by the policy), then sleeps on the futex. `sleepers` counts
// the threads that may be asleep on v, so that a notifier skips the system call when none is.
template <class T>
inline T wait_while_equal(const std::atomic<T>& v, T old, std::atomic<int>& sleepers) {
  const WaitSettings& ws = wait_settings();
  const auto policy = static_cast<WaitPolicy>(ws.policy.load(std::memory_order_relaxed));
  T now = v.load(std::memory_order_acquire);
  if (now != old) return now;
  if (policy != WaitPolicy::passive) {
    const int64_t budget = ws.spin_ns.load(std::memory_order_relaxed);
    const auto t0 = std::chrono::steady_clock::now();
    for (uint32_t i = 1;; ++i) {
      cpu_relax();
      now = v.load(std::memory_order_acquire);
      if (now != old) return now;
      if (policy == WaitPolicy::active) continue;
      if ((i & 31) == 0 && std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count() >= budget)
        break;
    }
  }
  for (;;) {
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    v.wait(old, std::memory_order_seq_cst);
    sleepers.fetch_sub(1, std::memory_order_relaxed);
    now = v.load(std::memory_order_acquire);
    if (now != old) return now;
  }
}

class ThreadPool {
 public:
  using Task = void (*)(void* ctx, int t);
  static constexpr int kMaxThreads = 4095;  // fits the state word; more is clamped

  static ThreadPool& instance() {
    // Leaked on purpose (see the contract); replaced after fork, whose child has no workers.
    static std::atomic<ThreadPool*> pool{nullptr};
    static std::mutex make;
    ThreadPool* p = pool.load(std::memory_order_acquire);
    if (p && p->pid_ == process_id()) return *p;
    std::lock_guard<std::mutex> lock(make);
    p = pool.load(std::memory_order_relaxed);
    if (!p || p->pid_ != process_id()) {
      p = new ThreadPool();
      pool.store(p, std::memory_order_release);
    }
    return *p;
  }

  void run(int n, Task task, void* ctx) {
    if (n <= 1) {
      task(ctx, 0);
      return;
    }
    SEGML_CHECK(n <= kMaxThreads, "ThreadPool::run: ", n, " threads asked for, at most ", kMaxThreads);
    std::lock_guard<std::mutex> lock(mutex_);
    grow(n - 1);
    task_ = task;
    ctx_ = ctx;
    error_ = nullptr;
    pending_.store(n - 1, std::memory_order_relaxed);
    const uint32_t old = state_.load(std::memory_order_relaxed);
    state_.store((((old >> kCountBits) + 1) << kCountBits) | static_cast<uint32_t>(n), std::memory_order_seq_cst);
    if (worker_sleepers_.load(std::memory_order_seq_cst) > 0) state_.notify_all();

    std::exception_ptr own;
    in_pool_task() = true;
    try {
      task(ctx, 0);
    } catch (...) {
      own = std::current_exception();
    }
    in_pool_task() = false;
    for (int left = pending_.load(std::memory_order_acquire); left != 0;)
      left = wait_while_equal(pending_, left, caller_sleepers_);
    if (own) std::rethrow_exception(own);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  ThreadPool() : pid_(process_id()) {}

  // Called before the run's state_ is published: a new worker starts from the state it was created
  // under, so the run about to start counts as news even if the thread is scheduled after it.
  void grow(int workers) {
    const uint32_t current = state_.load(std::memory_order_relaxed);
    while (static_cast<int>(threads_) < workers) {
      const int index = static_cast<int>(++threads_);
      std::thread([this, index, current] { work(index, current); }).detach();
    }
  }

  void work(int index, uint32_t seen) {
    in_pool_task() = true;
    for (;;) {
      seen = wait_while_equal(state_, seen, worker_sleepers_);
      // The thread count comes with the generation that started the run: a worker that is not in
      // this run must not read anything the next run may already be writing.
      if (index >= static_cast<int>(seen & kCountMask)) continue;
      try {
        task_(ctx_, index);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1 && caller_sleepers_.load(std::memory_order_seq_cst) > 0)
        pending_.notify_one();
    }
  }

  static constexpr int kCountBits = 12;
  static constexpr uint32_t kCountMask = (1u << kCountBits) - 1;

  const int64_t pid_;
  std::mutex mutex_;  // one run at a time
  // (generation << 12) | thread count: a new generation starts a run.
  std::atomic<uint32_t> state_{0};
  std::atomic<int> pending_{0};       // workers of this run not finished yet
  std::atomic<int> worker_sleepers_{0}, caller_sleepers_{0};
  uint32_t threads_ = 0;              // workers started (only the run holding mutex_ grows it)
  // The run's parameters: written before state_ starts the run, read by its workers after.
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace detail

// How idle segml threads wait (see thread_pool.hpp); spin_us applies to WaitPolicy::automatic.
inline void set_wait_policy(WaitPolicy policy, int64_t spin_us = 100) {
  detail::wait_settings().policy.store(static_cast<int>(policy));
  detail::wait_settings().spin_ns.store(spin_us * 1000);
}

inline WaitPolicy wait_policy() { return static_cast<WaitPolicy>(detail::wait_settings().policy.load()); }

}  // namespace segml
