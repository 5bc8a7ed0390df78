#pragma once

// A small but real decoder-only transformer (Llama architecture) on CPU, in float32: token
// embedding, RMSNorm, grouped-query attention with rotary embedding and a KV cache, SwiGLU MLP
// and an LM head, with greedy decoding. It runs tensor-parallel and pipeline-parallel the way
// vLLM does: each rank holds only its shard of the weights and the ranks of one instance
// cooperate through MPI collectives (see Comm).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "netloader/safetensors.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace llama {

// The Hugging Face config.json fields the model needs.
struct ModelConfig {
  int hidden_size = 256;
  int num_hidden_layers = 4;
  int num_attention_heads = 8;
  int num_key_value_heads = 4;
  int intermediate_size = 704;
  int vocab_size = 512;  // >= 256: the tokenizer maps bytes to ids 0..255
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int head_dim() const { return hidden_size / num_attention_heads; }
};

// Reads config.json; names the field that is missing, mistyped or out of range.
netloader::Result<ModelConfig> ReadModelConfig(const std::string& path);
std::string ModelConfigJson(const ModelConfig& config);

// Where this process sits in its instance: rank = pp_rank * tp_size + tp_rank.
struct Parallel {
  int tp_size = 1;
  int tp_rank = 0;
  int pp_size = 1;
  int pp_rank = 0;
  int rank() const { return pp_rank * tp_size + tp_rank; }
  int world() const { return tp_size * pp_size; }
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp_size - 1; }
};

// The sharding scheme, declared in the netloader fingerprint so that only instances sharding the
// same way exchange weights.
inline constexpr const char* kLayoutKey = "netloader-llama/vllm-tp-split-v1";

// One weight this rank holds: a tensor of the checkpoint, or a slice of it.
struct ShardSpec {
  std::string path;            // the checkpoint file holding the whole tensor
  netloader::TensorSpec full;  // the whole tensor as the checkpoint stores it
  int split_dim = -1;  // -1: replicated; 0: rows (column-parallel); 1: columns (row-parallel)
  std::vector<int64_t> shape;  // this rank's part
  int64_t start = 0;           // where this rank's part begins along split_dim
  uint64_t size_bytes() const;
};

// The weights rank `parallel` needs, in the checkpoint's storage order. Column-parallel layers
// (q/k/v/gate/up, embedding, LM head) are split on dim 0, row-parallel ones (o/down) on dim 1,
// norms replicated; a pipeline stage holds only its layers (the first also the embedding, the
// last also the final norm and LM head). Errors name the tensor that is missing, unexpected or
// misshapen, or the size that does not divide.
netloader::Result<std::vector<ShardSpec>> PlanShards(const netloader::CheckpointLayout& layout,
                                                     const ModelConfig& config,
                                                     const Parallel& parallel);

// This rank's weight buffers.
class Weights {
 public:
  explicit Weights(std::vector<ShardSpec> specs);
  // The buffers as netloader sees them: names of the checkpoint, this rank's shapes.
  netloader::ModelView view();
  // Reads this rank's slices from the checkpoint files, overwriting every buffer but those named
  // in `except` (loaded otherwise).
  netloader::Status LoadFromDisk(const std::set<std::string>& except = {});
  const float* get(const std::string& name) const;  // nullptr if this rank does not hold it
  uint64_t total_bytes() const;
  // Flips one bit of one weight: for fault tests only (a source whose memory went bad).
  void CorruptOneBit();

 private:
  std::vector<ShardSpec> specs_;
  std::vector<std::vector<float>> data_;
  std::map<std::string, size_t> index_;
};

// The collectives an instance's ranks use; a single process needs none of them.
class Comm {
 public:
  virtual ~Comm() = default;
  virtual void AllReduceSumTp(float* data, int count) = 0;
  // Index in [0, vocab) of the largest logit, given this rank's `count` logits starting at
  // `offset`. Ties go to the lowest index.
  virtual int ArgmaxTp(const float* logits, int count, int offset) = 0;
  virtual void SendNextStage(const float* data, int count) = 0;
  virtual void RecvPrevStage(float* data, int count) = 0;
  // The last stage's value, on every rank of the instance.
  virtual uint64_t BroadcastFromLast(uint64_t value) = 0;
  // XOR of every tensor-parallel rank's value.
  virtual uint64_t XorTp(uint64_t value) = 0;
  // A turn passed along the ranks in order: rank r > 0 waits for rank r - 1 to pass it.
  virtual void WaitForTurn() = 0;
  virtual void PassTurn() = 0;  // to rank r + 1, if any
  // Rank 0's value, on every rank.
  virtual int BroadcastFromFirst(int value) = 0;
  // Every rank's `text`, in rank order, on rank 0 (empty elsewhere).
  virtual std::vector<std::string> GatherToFirst(const std::string& text) = 0;
};
std::unique_ptr<Comm> MakeLocalComm();
// MPI_COMM_WORLD split into tensor-parallel groups; MPI must be initialised.
std::unique_ptr<Comm> MakeMpiComm(const Parallel& parallel);

struct Generation {
  std::vector<int> tokens;  // the new tokens, not the prompt
  // XXH3-64 of every logit computed for every generated token: two runs agree on it only if
  // every weight they used was bit-identical (combined over the tensor-parallel ranks).
  uint64_t logits_digest = 0;
};

class Engine {
 public:
  Engine(const ModelConfig& config, const Parallel& parallel, const Weights& weights, Comm& comm);
  // Greedy (temperature 0) decoding of `prompt`; every rank of the instance must call it.
  // `on_token`, if set, sees each new token as soon as it is known.
  Generation Generate(const std::vector<int>& prompt, int max_new_tokens,
                      const std::function<void(int token)>& on_token = nullptr);

 private:
  int Forward(int token, int position, uint64_t* digest);  // the next token
  void Layer(int layer, float* x, int position);

  ModelConfig config_;
  Parallel parallel_;
  const Weights& weights_;
  Comm& comm_;
  int first_layer_ = 0, layer_count_ = 0;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per local layer
};

// Byte-level tokenizer: one token per byte; ids >= 256 print as <id>.
std::vector<int> Tokenize(const std::string& text);
std::string Detokenize(const std::vector<int>& tokens);

}  // namespace llama
