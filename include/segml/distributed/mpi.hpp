// segml/distributed/mpi.hpp: the Communicator of segml/distributed/communicator.hpp on MPI.
//
// Include it only where MPI is available (CMake: find_package(MPI) and link MPI::MPI_CXX or
// MPI::MPI_C); the rest of segml never includes it. A program becomes data-parallel with:
//
//   segml::distributed::MpiSession mpi(&argc, &argv);     // MPI_Init when launched by mpirun/srun
//   options.communicator = mpi.world();                   // null when run as a plain process
//
// and is then launched N times: `mpirun -np N prog ...`, `mpirun --hostfile H -np N prog ...`, or
// `srun --mpi=pmix -n N prog ...` under Slurm. MpiSession initialises MPI only when a launcher set
// the environment of a rank (OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK/PMI_SIZE); a plain run stays
// a plain process and never touches MPI. MPI is initialised with MPI_THREAD_FUNNELED: segml calls
// MPI from the thread that runs the training loop only (its kernel threads never do).
//
// Errors: every communicator returns MPI errors (MPI_ERRORS_RETURN) and each call turns one into a
// segml::Error naming the operation and MPI's message. abort() is MPI_Abort(MPI_COMM_WORLD): the
// launcher then ends every rank, which is how a failure on one rank stops the job instead of
// leaving the others waiting in a collective.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/distributed/communicator.hpp"

namespace segml::distributed {

// True when this process was started by an MPI launcher as one rank of a job.
inline bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

namespace detail {
inline void mpi_check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  fail("MPI: ", what, " failed: ", std::string(text, static_cast<size_t>(len)));
}

// MPI counts are int: larger buffers go in pieces.
inline constexpr int64_t kMpiChunk = int64_t{1} << 30;
}  // namespace detail

class MpiRequest final : public Request {
 public:
  explicit MpiRequest(std::vector<MPI_Request> r) : requests_(std::move(r)) {}
  ~MpiRequest() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !requests_.empty()) MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  bool test() override {
    if (requests_.empty()) return true;
    int done = 0;
    detail::mpi_check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE),
                      "MPI_Testall");
    if (done) requests_.clear();
    return done != 0;
  }
  void wait() override {
    if (requests_.empty()) return;
    detail::mpi_check(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
                      "MPI_Waitall");
    requests_.clear();
  }

 private:
  std::vector<MPI_Request> requests_;
};

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction) unless it is MPI_COMM_WORLD.
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    detail::mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    detail::mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm comm() const { return comm_; }

  std::string describe() const override {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string lib(version, static_cast<size_t>(len));
    lib = lib.substr(0, lib.find_first_of(",\n"));
    // Hosts: the ranks that share memory form one group per host.
    MPI_Comm local;
    int hosts = 1;
    if (MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
      int local_rank = 0;
      MPI_Comm_rank(local, &local_rank);
      int leader = local_rank == 0 ? 1 : 0;
      MPI_Allreduce(&leader, &hosts, 1, MPI_INT, MPI_SUM, comm_);
      MPI_Comm_free(&local);
    }
    return lib + ", " + std::to_string(size_) + " processes on " + std::to_string(hosts) + (hosts == 1 ? " host" : " hosts");
  }

  void allreduce_sum(double* data, int64_t n) override { reduce(data, n, MPI_DOUBLE, "MPI_Allreduce (double)"); }
  void allreduce_sum(float* data, int64_t n) override { reduce(data, n, MPI_FLOAT, "MPI_Allreduce (float)"); }

  std::unique_ptr<Request> iallreduce_sum(float* data, int64_t n) override {
    std::vector<MPI_Request> reqs;
    for (int64_t off = 0; off < n; off += detail::kMpiChunk) {
      MPI_Request r;
      detail::mpi_check(MPI_Iallreduce(MPI_IN_PLACE, data + off, static_cast<int>(std::min(detail::kMpiChunk, n - off)),
                                       MPI_FLOAT, MPI_SUM, comm_, &r),
                        "MPI_Iallreduce");
      reqs.push_back(r);
    }
    return std::make_unique<MpiRequest>(std::move(reqs));
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    char* p = static_cast<char*>(data);
    for (int64_t off = 0; off < bytes; off += detail::kMpiChunk)
      detail::mpi_check(MPI_Bcast(p + off, static_cast<int>(std::min(detail::kMpiChunk, bytes - off)), MPI_BYTE, root, comm_),
                        "MPI_Bcast");
  }

  std::vector<uint64_t> allgather(uint64_t value) override {
    std::vector<uint64_t> all(static_cast<size_t>(size_));
    detail::mpi_check(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_), "MPI_Allgather");
    return all;
  }

  void barrier() override { detail::mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }

  std::shared_ptr<Communicator> duplicate() override {
    MPI_Comm dup;
    detail::mpi_check(MPI_Comm_dup(comm_, &dup), "MPI_Comm_dup");
    return std::make_shared<MpiCommunicator>(dup);
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this is for the type system
  }

 private:
  void reduce(void* data, int64_t n, MPI_Datatype type, const char* what) {
    const int64_t elem = type == MPI_DOUBLE ? 8 : 4;
    char* p = static_cast<char*>(data);
    for (int64_t off = 0; off < n; off += detail::kMpiChunk)
      detail::mpi_check(MPI_Allreduce(MPI_IN_PLACE, p + off * elem, static_cast<int>(std::min(detail::kMpiChunk, n - off)),
                                      type, MPI_SUM, comm_),
                        what);
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

// MPI for the lifetime of a program: initialised when the process is one rank of an MPI job (or
// when `force`), finalised at the end. world() is null for a plain process.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv, bool force = false) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized && (force || launched_by_mpi())) {
      int provided = 0;
      detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_ = true;
      initialized = 1;
    }
    if (initialized) {
      MPI_Comm world;
      detail::mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &world), "MPI_Comm_dup");
      world_ = std::make_shared<MpiCommunicator>(world);
    }
  }
  ~MpiSession() {
    world_.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // The job's ranks (MPI_COMM_WORLD), or null when this process is not part of an MPI job.
  std::shared_ptr<Communicator> world() const { return world_; }
  int rank() const { return world_ ? world_->rank() : 0; }
  int size() const { return world_ ? world_->size() : 1; }

 private:
  bool owns_ = false;
  std::shared_ptr<MpiCommunicator> world_;
};

}  // namespace segml::distributed
