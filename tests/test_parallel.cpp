// segml's thread pool and parallel loops (core/parallel.hpp, core/thread_pool.hpp): every index is
// run exactly once, nested loops run serially, exceptions reach the caller, concurrent callers take
// turns, every wait policy gives the same results, and a forked child gets a working pool.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <segml/core/parallel.hpp>

namespace {

// Restores the thread count and wait policy a test changed.
struct Restore {
  int threads = segml::num_threads();
  segml::WaitPolicy policy = segml::wait_policy();
  ~Restore() {
    segml::set_num_threads(threads);
    segml::set_wait_policy(policy);
  }
};

#if defined(SEGML_SINGLE_THREADED)
constexpr bool kThreaded = false;
#else
constexpr bool kThreaded = true;
#endif

}  // namespace

TEST_CASE("parallel_run calls each index once, on as many threads as asked") {
  Restore restore;
  for (int nt : {1, 2, 3, 5, 8}) {
    std::vector<std::atomic<int>> calls(static_cast<size_t>(nt));
    std::vector<std::thread::id> ids(static_cast<size_t>(nt));
    segml::parallel_run(nt, [&](int t) {
      calls[static_cast<size_t>(t)].fetch_add(1);
      ids[static_cast<size_t>(t)] = std::this_thread::get_id();
    });
    for (int t = 0; t < nt; ++t) CHECK(calls[static_cast<size_t>(t)].load() == 1);
    CHECK(ids[0] == std::this_thread::get_id());  // index 0 runs on the caller
    if (kThreaded && nt > 1) CHECK(ids[1] != std::this_thread::get_id());
    CHECK_FALSE(segml::in_parallel());
  }
}

TEST_CASE("parallel_for and parallel_for_dynamic cover the range exactly once") {
  Restore restore;
  segml::set_num_threads(4);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{4097}}) {
    for (int64_t grain : {int64_t{1}, int64_t{64}, int64_t{10000}}) {
      std::vector<std::atomic<int>> hit(static_cast<size_t>(n));
      segml::parallel_for(n, grain, [&](int64_t b, int64_t e) {
        CHECK(b < e);
        for (int64_t i = b; i < e; ++i) hit[static_cast<size_t>(i)].fetch_add(1);
      });
      segml::parallel_for_dynamic(n, grain, [&](int64_t b, int64_t e) {
        CHECK(b < e);
        for (int64_t i = b; i < e; ++i) hit[static_cast<size_t>(i)].fetch_add(1);
      });
      int bad = 0;
      for (auto& h : hit) bad += h.load() != 2;
      CHECK_MESSAGE(bad == 0, "n=", n, " grain=", grain);
    }
  }
  segml::parallel_for(0, 1, [&](int64_t, int64_t) { FAIL("called on an empty range"); });
}

TEST_CASE("a loop inside a parallel loop runs serially on its thread") {
  Restore restore;
  segml::set_num_threads(3);
  std::atomic<int> nested_ok{0};
  segml::parallel_run(3, [&](int) {
    CHECK(segml::in_parallel() == kThreaded);
    const auto me = std::this_thread::get_id();
    int chunks = 0;
    bool same_thread = true;
    segml::parallel_for(100, 1, [&](int64_t b, int64_t e) {
      ++chunks;
      same_thread = same_thread && std::this_thread::get_id() == me && b == 0 && e == 100;
    });
    if (!kThreaded || (chunks == 1 && same_thread)) nested_ok.fetch_add(1);
  });
  CHECK(nested_ok.load() == 3);
}

TEST_CASE("an exception in any thread reaches the caller after every thread has finished") {
  Restore restore;
  for (int thrower : {0, 1, 3}) {
    std::atomic<int> finished{0};
    bool caught = false;
    try {
      segml::parallel_run(4, [&](int t) {
        if (t == thrower) throw std::runtime_error("task " + std::to_string(t));
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        finished.fetch_add(1);
      });
    } catch (const std::runtime_error& e) {
      caught = std::string(e.what()) == "task " + std::to_string(thrower);
    }
    CHECK(caught);
    CHECK(finished.load() == (kThreaded ? 3 : thrower));  // the others completed before the call returned
  }
  // The pool still works afterwards.
  std::atomic<int> calls{0};
  segml::parallel_run(4, [&](int) { calls.fetch_add(1); });
  CHECK(calls.load() == 4);
}

TEST_CASE("every wait policy gives the same results, over many short runs") {
  Restore restore;
  segml::set_num_threads(3);
  const int64_t n = 3000;
  for (segml::WaitPolicy p : {segml::WaitPolicy::automatic, segml::WaitPolicy::passive, segml::WaitPolicy::active}) {
    segml::set_wait_policy(p, p == segml::WaitPolicy::automatic ? 20 : 100);
    int64_t total = 0;
    for (int rep = 0; rep < 2000; ++rep) {
      std::vector<int64_t> part(3, 0);
      const int nt = 1 + rep % 3;
      segml::parallel_run(nt, [&](int t) {
        for (int64_t i = n * t / nt; i < n * (t + 1) / nt; ++i) part[static_cast<size_t>(t)] += i;
      });
      total += std::accumulate(part.begin(), part.end(), int64_t{0});
      if (rep % 100 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));  // let workers fall asleep
    }
    CHECK(total == 2000 * (n * (n - 1) / 2));
  }
}

TEST_CASE("callers on several threads take turns and all get correct results") {
  Restore restore;
  segml::set_num_threads(2);
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      for (int rep = 0; rep < 300; ++rep) {
        std::vector<int64_t> out(257, 0);
        segml::parallel_for(257, 1, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) out[static_cast<size_t>(i)] = i * c;
        });
        for (int64_t i = 0; i < 257; ++i) wrong.fetch_add(out[static_cast<size_t>(i)] != i * c);
      }
    });
  for (auto& t : callers) t.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("a forked child gets a working pool") {
  Restore restore;
  segml::set_num_threads(2);
  std::atomic<int> warm{0};
  segml::parallel_run(2, [&](int) { warm.fetch_add(1); });  // the parent's workers exist
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::atomic<int> calls{0};
    segml::parallel_run(2, [&](int) { calls.fetch_add(1); });
    _exit(calls.load() == 2 ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("set_num_threads refuses 0 and the default honours SEGML_NUM_THREADS / OMP_NUM_THREADS") {
  CHECK_THROWS_WITH_AS(segml::set_num_threads(0), doctest::Contains("expected n >= 1"), segml::Error);
  CHECK(segml::detail::threads_from_env("SEGML_TEST_UNSET_VARIABLE") == 0);
  setenv("SEGML_TEST_THREADS", "3,2", 1);
  CHECK(segml::detail::threads_from_env("SEGML_TEST_THREADS") == 3);
  setenv("SEGML_TEST_THREADS", "zero", 1);
  CHECK(segml::detail::threads_from_env("SEGML_TEST_THREADS") == 0);  // ignored, with a message
  unsetenv("SEGML_TEST_THREADS");
  CHECK(segml::detail::available_cpus() >= 1);
}
