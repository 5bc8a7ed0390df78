#include "client/cli/flags.h"

namespace netloader::cli {

void ClientFlags::Add(CLI::App& app) {
  app.add_option("--source", options.sources,
                 "Source endpoint (tcp://HOST:PORT); repeat for fallbacks, tried in order. A "
                 "source at its fan-out limit may redirect to instances loading from it");
  app.add_option("--model", model_path,
                 "The expected layout: a checkpoint (file, index.json or directory) or a layout "
                 "file (a safetensors header without its data: the first 8 + N bytes of a "
                 ".safetensors file whose 8-byte little-endian prefix is N). Tensor data is "
                 "not read");
  status_flag_ = app.add_option(
      "--status", status_endpoint,
      "Load nothing: ask the server at ENDPOINT what it is doing (state: serving, loading with "
      "the bytes held, waiting or failed; model and partition; sessions; children, the relays "
      "streaming from it; bytes sent) and print it (--json: one JSON object). Exit 0 when it "
      "answered");
  auto* output = app.add_option(
      "--output", output_dir,
      "Directory to load the checkpoint into (created if missing): the shard files of --model "
      "under their names, and its index if it has one, written as the chunks arrive (as "
      "NAME.partial, renamed when complete; an interrupted pull run again resumes from them). "
      "Other files there are left alone; a file of one of those names is never replaced unless "
      "--overwrite is given");
  app.add_flag("--overwrite", overwrite,
               "Replace files of the same names already in --output (without it the client "
               "refuses before loading anything, naming them: exit 7)")
      ->needs(output);
  auto* verify = app.add_flag("--verify-only", verify_only, "Load and verify, but write nothing");
  app.add_option("--delta-from", delta_dir,
                 "A delta load: an older copy of the model on local disk (same layout as --model, "
                 "e.g. the last step's weights) is read first, and only the chunks whose digests "
                 "differ from the source's are pulled. bytes_reused in the summary says how much "
                 "was kept; every chunk of the result is verified either way")
      ->check(CLI::ExistingPath);
  app.add_option("--tensors", options.tensors,
                 "A partial load: only the tensors whose names match PATTERN ('*' any run of "
                 "characters, '?' one, '\\' makes the next literal; a name without wildcards "
                 "is itself). Repeat for more. Each must match a tensor of --model. A source "
                 "serves when it holds every one of them with the same dtype and shape, whatever "
                 "else it holds; its pipeline split (--pp-size, --pp-rank) may differ. --output "
                 "then gets only these tensors, in the shard files of --model that hold them")
      ->type_name("PATTERN");
  serve_flag_ = app.add_option(
      "--serve", serving.listen,
      "Serve the model while loading it and afterwards, at this ZeroMQ endpoint "
      "(tcp://ADDRESS:PORT, an address the other instances reach; port 0 picks one, see "
      "--serve-endpoint-file). Needs the whole model (not --tensors)");
  app.add_option("--serve-endpoint-file", serve_endpoint_file,
                 "With --serve: write the bound endpoint to this file once serving")
      ->needs(serve_flag_);
  app.add_option("--serve-max-clients", serving.max_concurrent_transfers,
                 "With --serve: clients streamed at once")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str()
      ->needs(serve_flag_);
  app.add_option("--serve-chunk-mib", serve_chunk_mib,
                 "With --serve: MPI message size in MiB once loaded, if the load failed (while "
                 "loading, the source's chunks are forwarded as they are)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str()
      ->needs(serve_flag_);
  AddFanoutFlag(app, serving.fanout);
  AddAdvertiseFlag(app, serving.advertise);
  AddRegistryTtlFlag(app, serving.registry_ttl);
  app.add_flag("--skip-output-check", skip_output_check,
               "With --delta-from: do not read --output back to check it against the source's "
               "per-tensor digests (otherwise every chunk is verified in the output files' own "
               "pages as it arrives)");
  output->excludes(verify);
  app.add_option("--stripe", options.stripe,
                 "Pull from up to this many --source at once, disjoint chunks from each, handed "
                 "out a few at a time (a slower source sends fewer; a failed one's chunks go to "
                 "the others). The sources must hold the same weights")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--register-timeout", register_timeout_s,
                 "Seconds a source has to answer registration")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--busy-timeout", busy_timeout_s,
                 "Seconds to keep retrying a busy source before trying the next")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--cold-start-wait", cold_start_wait_s,
                 "With --registry and no --source, when no instance holds the model: seconds to "
                 "wait for the instance that claimed in the registry to read it from storage (an "
                 "engine) to serve it, instead of failing at once. This client never reads for "
                 "the others; 0 never waits")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  testing.AddLoadHooks(app);
  common.log_level = "warn";  // the summary line says what happened; the library's INFO repeats it
  common.Add(app);
}

Status ClientFlags::Apply() {
  options.register_timeout = FromSeconds(register_timeout_s);
  options.busy_timeout = FromSeconds(busy_timeout_s);
  options.cold_start_wait = FromSeconds(cold_start_wait_s);
  Status applied = common.ApplyTo(options);
  if (!applied.ok() || !relaying()) return applied;
  // The relay serves with the load's stream settings (the common flags).
  applied = common.ApplyTo(serving);
  serving.chunk_bytes = serve_chunk_mib << 20;
  return applied;
}

}  // namespace netloader::cli
