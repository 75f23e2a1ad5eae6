// segml/train/prefetch.hpp: Prefetcher, a bounded queue of items built ahead on background threads.
//
// Item k (k = first, first + 1, ...) is make(k). Worker threads claim the next unbuilt k, build it
// and park it; next() returns the items strictly in order, waiting for the one it needs. At most
// `depth` items are claimed ahead of the consumer, so memory stays bounded. Because an item is a
// function of k alone, the sequence is identical whatever the number of workers or their timing.
// An exception thrown by make(k) is rethrown by the next() that asks for item k.
// Does not: reorder, skip or drop items; the destructor waits for the builds in progress.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "segml/core/error.hpp"

namespace segml::train {

template <class Item>
class Prefetcher {
 public:
  Prefetcher(std::function<Item(int64_t)> make, int64_t first, int workers = 2, int64_t depth = 4)
      : make_(std::move(make)), next_claim_(first), next_out_(first), depth_(depth) {
    SEGML_CHECK(workers >= 1 && depth >= 1, "Prefetcher: need workers >= 1 and depth >= 1, got ", workers, ", ", depth);
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;
  ~Prefetcher() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // The next item in order (blocks until it is built).
  Item next() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return ready_.count(next_out_) > 0; });
    Slot slot = std::move(ready_[next_out_]);
    ready_.erase(next_out_);
    ++next_out_;
    lock.unlock();
    cv_.notify_all();
    if (slot.error) std::rethrow_exception(slot.error);
    return std::move(slot.item);
  }

 private:
  struct Slot {
    Item item{};
    std::exception_ptr error;
  };

  void work() {
    for (;;) {
      int64_t k = 0;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || next_claim_ < next_out_ + depth_; });
        if (stop_) return;
        k = next_claim_++;
      }
      Slot slot;
      try {
        slot.item = make_(k);
      } catch (...) {
        slot.error = std::current_exception();
      }
      {
        const std::lock_guard<std::mutex> lock(mutex_);
        ready_.emplace(k, std::move(slot));
      }
      cv_.notify_all();
    }
  }

  std::function<Item(int64_t)> make_;
  int64_t next_claim_, next_out_, depth_;
  bool stop_ = false;
  std::map<int64_t, Slot> ready_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
};

}  // namespace segml::train
