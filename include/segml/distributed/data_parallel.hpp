// segml/distributed/data_parallel.hpp: the pieces of data-parallel training (torch DDP's), on any
// Communicator (segml/distributed/communicator.hpp).
//
// GradientReducer sums the gradients of every process while backward() is still running. The
// parameters are grouped, in reverse order of registration (the order in which backward completes
// them), into buckets of about `bucket_bytes` (25 MB, DDP's bucket_cap_mb). Each parameter carries
// a gradient-ready hook (autograd/variable.hpp); when the last gradient of a bucket is complete the
// bucket is copied into one buffer and its sum is started (Communicator::iallreduce_sum), in bucket
// order on every process, while backward() goes on with the layers below. finish() starts the
// buckets whose parameters the graph did not reach (with their current gradient, or zeros), waits
// for every sum and writes them back as the gradients. Gradient accumulation: only the backward()
// after arm() starts sums (DDP's no_sync for the others). The sums are plain sums: the Trainer
// scales each process's loss by its share of the global count before backward(), so the sum is the
// gradient of the global mean (see segml/train/trainer.hpp).
//
// broadcast_tensors() copies rank 0's values to every process (DDP's start); replica_checksum()
// and check_replicas() prove that every process holds bit-identical tensors; shard() is the slice
// of a global batch that one process takes.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "segml/autograd/variable.hpp"
#include "segml/core/error.hpp"
#include "segml/distributed/communicator.hpp"

namespace segml::distributed {

// Positions [begin, end) of a global batch [first, first + count) that process `rank` of `size`
// takes: contiguous, as even as possible (sizes differ by at most one); a process may get none
// when count < size.
struct Shard {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
inline Shard shard(int64_t first, int64_t count, int rank, int size) {
  return {first + count * rank / size, first + count * (rank + 1) / size};
}

// What a reducer measured over the steps since reset_stats().
struct ReducerStats {
  int64_t steps = 0;
  int64_t buckets = 0;            // per step
  double bytes = 0;               // per step
  double backward_seconds = 0;    // arm() to the end of backward (finish() called), summed
  double wait_seconds = 0;        // time finish() waited for sums still in flight: communication not hidden
};

class GradientReducer {
 public:
  // `params`: the trained parameters in registration order (they must outlive the reducer).
  GradientReducer(std::shared_ptr<Communicator> comm, std::vector<Var<float>*> params,
                  int64_t bucket_bytes = int64_t{25} << 20)
      : comm_(std::move(comm)), params_(std::move(params)) {
    SEGML_CHECK(comm_ != nullptr, "GradientReducer: no communicator");
    SEGML_CHECK(bucket_bytes > 0, "GradientReducer: bucket size must be > 0, got ", bucket_bytes);
    const int64_t cap = std::max<int64_t>(1, bucket_bytes / int64_t(sizeof(float)));
    slot_of_.resize(params_.size());
    for (size_t k = params_.size(); k-- > 0;) {
      const int64_t n = params_[k]->numel();
      if (buckets_.empty() || (buckets_.back().numel > 0 && buckets_.back().numel + n > cap)) buckets_.emplace_back();
      Bucket& b = buckets_.back();
      slot_of_[k] = {buckets_.size() - 1, b.numel};
      b.params.push_back(k);
      b.numel += n;
    }
    for (Bucket& b : buckets_) b.buffer.assign(static_cast<size_t>(b.numel), 0.0f);
    for (size_t k = 0; k < params_.size(); ++k) params_[k]->set_grad_ready_hook([this, k] { on_ready(k); });
  }
  ~GradientReducer() {
    for (Var<float>* p : params_) p->set_grad_ready_hook({});
    for (Bucket& b : buckets_)
      if (b.request) try {
          b.request->wait();
        } catch (...) {
        }
  }
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }
  // The parameter indices of bucket b, in the order backward completes them.
  const std::vector<size_t>& bucket(int64_t b) const { return buckets_[static_cast<size_t>(b)].params; }

  // The next backward() completes the step's gradients: start the sums as they become ready.
  void arm() {
    armed_ = true;
    next_launch_ = 0;
    for (Bucket& b : buckets_) b.pending = b.params.size();
    armed_at_ = std::chrono::steady_clock::now();
  }

  // After the armed backward(): starts what is left, waits for every sum, writes the gradients.
  void finish() {
    SEGML_CHECK(armed_, "GradientReducer::finish: arm() was not called before the step's last backward()");
    const auto backward_end = std::chrono::steady_clock::now();
    for (size_t b = 0; b < buckets_.size(); ++b) buckets_[b].pending = 0;
    launch_ready();
    for (Bucket& b : buckets_) b.request->wait();
    const auto waited = std::chrono::steady_clock::now();
    for (Bucket& b : buckets_) {
      b.request.reset();
      int64_t at = 0;
      for (size_t k : b.params) {
        Var<float>& p = *params_[k];
        Tensor<float> g = Tensor<float>::empty(p.shape());
        std::memcpy(g.data(), b.buffer.data() + at, sizeof(float) * static_cast<size_t>(p.numel()));
        p.grad() = std::move(g);
        at += p.numel();
      }
    }
    armed_ = false;
    double bytes = 0;
    for (const Bucket& b : buckets_) bytes += 4.0 * double(b.numel);
    stats_.steps += 1;
    stats_.buckets = bucket_count();
    stats_.bytes = bytes;
    stats_.backward_seconds += std::chrono::duration<double>(backward_end - armed_at_).count();
    stats_.wait_seconds += std::chrono::duration<double>(waited - backward_end).count();
  }

  const ReducerStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    int64_t numel = 0;
    std::vector<float> buffer;
    size_t pending = 0;  // parameters whose gradient is not complete yet
    std::unique_ptr<Request> request;
  };
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
  };

  void on_ready(size_t k) {
    if (!armed_) return;
    Bucket& b = buckets_[slot_of_[k].bucket];
    if (b.pending > 0) --b.pending;
    launch_ready();
    // Let the sums in flight advance (MPI progresses non-blocking collectives inside its calls).
    for (Bucket& x : buckets_)
      if (x.request) x.request->test();
  }

  // Starts the complete buckets in bucket order (the same on every process: a collective order).
  void launch_ready() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
      Bucket& b = buckets_[next_launch_++];
      int64_t at = 0;
      for (size_t k : b.params) {
        const Var<float>& p = *params_[k];
        float* dst = b.buffer.data() + at;
        if (p.grad().defined()) {
          const Tensor<float> g = p.grad().contiguous();
          std::memcpy(dst, g.data(), sizeof(float) * static_cast<size_t>(p.numel()));
        } else {
          std::fill(dst, dst + p.numel(), 0.0f);
        }
        at += p.numel();
      }
      b.request = comm_->iallreduce_sum(b.buffer.data(), b.numel);
    }
  }

  std::shared_ptr<Communicator> comm_;
  std::vector<Var<float>*> params_;
  std::vector<Slot> slot_of_;
  std::vector<Bucket> buckets_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  std::chrono::steady_clock::time_point armed_at_;
  ReducerStats stats_;
};

// Copies rank 0's values of every tensor to the other processes.
inline void broadcast_tensors(Communicator& comm, const std::vector<Tensor<float>*>& tensors) {
  for (Tensor<float>* t : tensors) {
    SEGML_CHECK(t->is_contiguous(), "broadcast_tensors: tensors must be contiguous");
    comm.broadcast(t->data(), t->numel() * int64_t(sizeof(float)), 0);
  }
}

// FNV-1a over the bits of every tensor, in order: equal on two processes iff (but for a 2^-64
// chance) every value is bit-identical.
inline uint64_t replica_checksum(const std::vector<const Tensor<float>*>& tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const Tensor<float>* t : tensors) {
    const Tensor<float> c = t->contiguous();
    const unsigned char* p = reinterpret_cast<const unsigned char*>(c.data());
    for (int64_t i = 0, n = c.numel() * int64_t(sizeof(float)); i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

// Throws, naming `what` and the processes that differ from rank 0, unless every process holds
// bit-identical tensors.
inline void check_replicas(Communicator& comm, const std::vector<const Tensor<float>*>& tensors, const std::string& what) {
  const std::vector<uint64_t> all = comm.allgather(replica_checksum(tensors));
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  SEGML_CHECK(differ.empty(), "data-parallel training: ", what, ": the parameters of rank(s) ", differ,
              " differ from rank 0's (checksums ", all[0], " vs ", all[all.size() > 1 ? 1 : 0],
              "); the replicas have diverged");
}

}  // namespace segml::distributed
