// segml/core/file.hpp: durable file and folder writes (POSIX).
//
// What "durable" means here: after fsync_file / publish_folder return, the data and the name
// survive a kill -9 or a power cut. publish_folder makes a whole folder appear under its final
// name with ONE rename, after every file in it and the folder itself were fsynced, then fsyncs
// the parent; a reader never sees a half-written folder under the final name. A folder that
// already has the final name is first renamed aside (so the name briefly does not exist, never
// names a mix) and removed after the new one is in place.
//
// Temporary names are "<name>.tmp<pid>" for files (safetensors::write_file_atomic) and
// ".<name>.tmp-<pid>" / ".<name>.old-<pid>" for folders; process_alive() lets a cleaner leave the
// temporaries of a process that still runs alone. Does not: lock a folder against two writers.
#pragma once

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include "segml/core/error.hpp"

namespace segml::file {

// fsync of a file or a folder (a folder's fsync makes the names in it durable).
inline void fsync_path(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open '", p.string(), "' to sync it: ", std::strerror(errno));
  const int r = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on folders (EINVAL): there the rename is already as durable as it gets.
  if (r != 0 && !(err == EINVAL && std::filesystem::is_directory(p)))
    fail("cannot sync '", p.string(), "' to disk: ", std::strerror(err));
}

// The folder holding `p` ("." for a bare name).
inline std::filesystem::path parent_of(const std::filesystem::path& p) {
  const std::filesystem::path parent = std::filesystem::absolute(p).parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

// True when a process with this id exists (a temporary of a live process is not stale).
inline bool process_alive(long pid) {
  if (pid <= 0) return false;
  if (pid == static_cast<long>(::getpid())) return true;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

// Removes a folder so that no reader ever sees part of it under its name: renamed to
// ".<name>.old-<pid>" first (durably), then deleted.
inline void remove_folder(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  const fs::path aside = parent_of(dir) / ("." + dir.filename().string() + ".old-" + std::to_string(::getpid()));
  fs::remove_all(aside, ec);
  fs::rename(dir, aside, ec);
  if (ec) fail("cannot remove folder '", dir.string(), "' (rename to '", aside.string(), "' failed: ", ec.message(), ")");
  fsync_path(parent_of(dir));
  fs::remove_all(aside, ec);
  if (ec) fail("cannot delete '", aside.string(), "': ", ec.message());
}

// Publishes the complete folder `tmp` as `final_dir` (same parent folder): fsyncs every file in
// tmp, tmp itself, renames, fsyncs the parent. An existing final_dir is replaced.
inline void publish_folder(const std::filesystem::path& tmp, const std::filesystem::path& final_dir) {
  namespace fs = std::filesystem;
  for (const fs::directory_entry& e : fs::directory_iterator(tmp))
    if (e.is_regular_file()) fsync_path(e.path());
  fsync_path(tmp);
  std::error_code ec;
  fs::path aside;
  if (fs::exists(final_dir, ec)) {
    aside = parent_of(final_dir) / ("." + final_dir.filename().string() + ".old-" + std::to_string(::getpid()));
    fs::remove_all(aside, ec);
    fs::rename(final_dir, aside, ec);
    if (ec) fail("cannot move the old '", final_dir.string(), "' aside: ", ec.message());
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) fail("cannot rename '", tmp.string(), "' to '", final_dir.string(), "': ", ec.message());
  fsync_path(parent_of(final_dir));
  if (!aside.empty()) fs::remove_all(aside, ec);
}

}  // namespace segml::file
