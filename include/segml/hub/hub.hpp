// segml/hub/hub.hpp: one function turns "a path or a hub id" into a local path, as transformers'
// from_pretrained does.
//
//   std::string folder = hub::resolve("nvidia/segformer-b0-finetuned-ade-512-512", hub::model_files());
//
// The rule, in order:
//  1. A string naming an existing file or folder is that local path (even when it also looks like
//     a repo id), whatever the revision.
//  2. Otherwise it must be a valid repo id ("org/name" or "name"; hub/cache.hpp), else the error says
//     it neither exists nor is a repo id.
//  3. The HF cache: when refs/<revision> (or the commit itself) leads to a snapshot holding every
//     file of the FileSet, that snapshot folder is returned. No network is used then.
//  4. With HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1 or Options::local_files_only, the error says
//     what the cache lacks and the commands that fix it.
//  5. Otherwise the files are downloaded into the cache (hub/download.hpp) and the snapshot folder
//     is returned. A build without cpp-httplib says it cannot download.
// The loaders (io/checkpoint.hpp, the image processors, the CLIP tokenizer) call this, so every
// program accepts hub ids wherever it accepts a model folder.
#pragma once

#include <string>
#include <system_error>

#include "segml/hub/cache.hpp"
#include "segml/hub/download.hpp"

namespace segml::hub {

// The local path for `path_or_id` (see the file comment). `who` prefixes the error messages.
inline std::string resolve(const std::string& path_or_id, const FileSet& files, const Options& opt = {},
                           const std::string& who = "from_pretrained") {
  std::error_code ec;
  if (fs::exists(path_or_id, ec)) return path_or_id;
  if (const std::string why = repo_id_error(path_or_id); !why.empty())
    fail(who, ": '", path_or_id, "' does not exist, and it is not a hub repo id either (", why, ")");
  check_revision(opt.revision);
  if (auto snap = cached_snapshot(path_or_id, opt.revision, files)) return snap->string();
  const std::string state = "no local folder '" + path_or_id + "'; " + describe_cache(path_or_id, opt.revision, files);
  if (opt.local_files_only || offline())
    fail(who, ": '", path_or_id, "' (revision '", opt.revision, "') is not available offline: ", state, "; and ",
         opt.local_files_only ? "local_files_only is set" : "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE forbid downloads",
         ". Fix: run once with network (unset HF_HUB_OFFLINE) to fill the cache, or use ",
         detail::cli_download_hint(path_or_id, opt.revision));
  try {
    return download_snapshot(path_or_id, files, opt, state).string();
  } catch (const Error& e) {
    throw Error(who + ": " + e.what());
  }
}

}  // namespace segml::hub
