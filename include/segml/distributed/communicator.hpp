// segml/distributed/communicator.hpp: what data-parallel training needs from a group of processes.
//
// A Communicator is one group of `size()` processes ("ranks") that take part in the same collective
// operations, each call made by every rank in the same order (MPI's rule). segml's Trainer uses
// one for data-parallel training (segml/train/trainer.hpp: TrainOptions::communicator): sums of
// gradients, of loss and pixel counts, of BatchNorm statistics and of evaluation counts, a broadcast
// of rank 0's weights, and a checksum comparison of the replicas.
//
// This header has no MPI in it: segml/distributed/mpi.hpp implements it on MPI (Open MPI, MPICH,
// Slurm's srun), and a user can implement it on anything else. duplicate() gives an independent
// channel over the same ranks (MPI_Comm_dup): collectives on different channels do not have to be
// ordered with respect to each other, which lets the Trainer run its BatchNorm and loss sums while
// gradient sums started earlier are still in flight.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace segml::distributed {

// A collective started without waiting for it (MPI_Request).
class Request {
 public:
  virtual ~Request() = default;
  // Lets the operation advance; true once it has completed (MPI_Test).
  virtual bool test() = 0;
  // Blocks until it has completed (MPI_Wait).
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "Open MPI 4.1.4, 2 processes on 1 host" and the like, for logs.
  virtual std::string describe() const = 0;

  // Element-wise sums over the ranks, in place; every rank gets the same result.
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  // The same, started now and finished by the Request (data must stay alive until then).
  virtual std::unique_ptr<Request> iallreduce_sum(float* data, int64_t n) = 0;
  // Rank `root`'s bytes to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Every rank's value, in rank order.
  virtual std::vector<uint64_t> allgather(uint64_t value) = 0;
  virtual void barrier() = 0;
  // An independent channel over the same ranks (a collective call of every rank).
  virtual std::shared_ptr<Communicator> duplicate() = 0;
  // Ends every process of the group now, with this exit code (MPI_Abort): what a rank that failed
  // does so that the others never wait for it forever.
  [[noreturn]] virtual void abort(int code) = 0;

  bool is_main() const { return rank() == 0; }
};

}  // namespace segml::distributed
