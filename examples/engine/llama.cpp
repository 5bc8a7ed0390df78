#include "examples/engine/llama.h"

#include <mpi.h>
#include <xxhash.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace llama {

using netloader::Result;
using netloader::Status;
using netloader::StatusCode;

namespace {

Status Invalid(const std::string& message) { return Status(StatusCode::kInvalidArgument, message); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

// What the checkpoint must hold for `config`: name -> (shape, split dim, owner). The owner is a
// layer index, or kFirst / kLast for the tensors of the first / last pipeline stage.
constexpr int kFirst = -1;
constexpr int kLast = -2;
struct Expected {
  std::vector<int64_t> shape;
  int split_dim;
  int owner;
};

std::map<std::string, Expected> ExpectedTensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size, v = c.vocab_size, i = c.intermediate_size;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim();
  const int64_t kv = int64_t{c.num_key_value_heads} * c.head_dim();
  std::map<std::string, Expected> out;
  out["model.embed_tokens.weight"] = {{v, d}, 0, kFirst};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out[p + "input_layernorm.weight"] = {{d}, -1, l};
    out[p + "self_attn.q_proj.weight"] = {{q, d}, 0, l};
    out[p + "self_attn.k_proj.weight"] = {{kv, d}, 0, l};
    out[p + "self_attn.v_proj.weight"] = {{kv, d}, 0, l};
    out[p + "self_attn.o_proj.weight"] = {{d, q}, 1, l};
    out[p + "post_attention_layernorm.weight"] = {{d}, -1, l};
    out[p + "mlp.gate_proj.weight"] = {{i, d}, 0, l};
    out[p + "mlp.up_proj.weight"] = {{i, d}, 0, l};
    out[p + "mlp.down_proj.weight"] = {{d, i}, 1, l};
  }
  out["model.norm.weight"] = {{d}, -1, kLast};
  out["lm_head.weight"] = {{v, d}, 0, kLast};
  return out;
}

std::string LayerName(int layer, const char* what) {
  return "model.layers." + std::to_string(layer) + "." + what;
}

void RmsNorm(float* out, const float* x, const float* weight, int n, float eps) {
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += double{x[i]} * x[i];
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / n) + eps);
  for (int i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

// out[r] = W[r, :] . x for a row-major W of rows x cols. Eight partial sums let the compiler
// vectorise without reordering anything run to run: the result is deterministic.
void MatVec(float* out, const float* w, const float* x, int rows, int cols) {
  for (int r = 0; r < rows; ++r) {
    const float* row = w + static_cast<size_t>(r) * cols;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int c = 0;
    for (; c + 8 <= cols; c += 8) {
      for (int k = 0; k < 8; ++k) acc[k] += row[c + k] * x[c + k];
    }
    float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; c < cols; ++c) sum += row[c] * x[c];
    out[r] = sum;
  }
}

// Rotary embedding, Hugging Face "rotate half" convention, on one head of `dim` values.
void Rope(float* head, int dim, int position, float theta) {
  const int half = dim / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = position * std::pow(theta, -2.0f * i / dim);
    const float c = std::cos(angle), s = std::sin(angle);
    const float a = head[i], b = head[i + half];
    head[i] = a * c - b * s;
    head[i + half] = b * c + a * s;
  }
}

}  // namespace

Result<ModelConfig> ReadModelConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status(StatusCode::kNotFound, "model config " + path + " is missing");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Invalid(path + ": not a JSON object");
  ModelConfig c;
  auto integer = [&](const char* key, int* out, bool required) -> Status {
    auto it = j.find(key);
    if (it == j.end()) return required ? Invalid(path + ": '" + key + "' is missing") : Status();
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > (1 << 24)) {
      return Invalid(path + ": '" + key + "' must be an integer in [1, 16777216]");
    }
    *out = it->get<int>();
    return Status::Ok();
  };
  auto real = [&](const char* key, float* out) -> Status {
    auto it = j.find(key);
    if (it == j.end()) return Status::Ok();
    if (!it->is_number() || !(it->get<double>() > 0)) {
      return Invalid(path + ": '" + key + "' must be a positive number");
    }
    *out = it->get<float>();
    return Status::Ok();
  };
  for (Status s : {integer("hidden_size", &c.hidden_size, true),
                   integer("num_hidden_layers", &c.num_hidden_layers, true),
                   integer("num_attention_heads", &c.num_attention_heads, true),
                   integer("intermediate_size", &c.intermediate_size, true),
                   integer("vocab_size", &c.vocab_size, true),
                   real("rms_norm_eps", &c.rms_norm_eps), real("rope_theta", &c.rope_theta)}) {
    if (!s.ok()) return s;
  }
  c.num_key_value_heads = c.num_attention_heads;
  if (Status s = integer("num_key_value_heads", &c.num_key_value_heads, false); !s.ok()) return s;
  if (c.hidden_size % c.num_attention_heads != 0 || c.head_dim() % 2 != 0) {
    return Invalid(path + ": hidden_size must be num_attention_heads x an even head size");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid(path + ": num_attention_heads must be a multiple of num_key_value_heads");
  }
  if (c.vocab_size < 256) return Invalid(path + ": vocab_size must be >= 256 (byte tokens)");
  auto tied = j.find("tie_word_embeddings");
  if (tied != j.end() && !(tied->is_boolean() && !tied->get<bool>())) {
    return Invalid(path + ": tie_word_embeddings must be false (lm_head.weight is separate)");
  }
  return c;
}

std::string ModelConfigJson(const ModelConfig& c) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"hidden_size", c.hidden_size},
                      {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads},
                      {"num_key_value_heads", c.num_key_value_heads},
                      {"intermediate_size", c.intermediate_size},
                      {"vocab_size", c.vocab_size},
                      {"rms_norm_eps", c.rms_norm_eps},
                      {"rope_theta", c.rope_theta},
                      {"tie_word_embeddings", false},
                      {"torch_dtype", "float32"}};
  return j.dump(2) + "\n";
}

uint64_t ShardSpec::size_bytes() const {
  uint64_t n = sizeof(float);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

Result<std::vector<ShardSpec>> PlanShards(const netloader::CheckpointLayout& layout,
                                          const ModelConfig& config, const Parallel& p) {
  const int t = p.tp_size;
  struct Divides {
    const char* what;
    int value, by;
  };
  for (const Divides& d : {Divides{"vocab_size", config.vocab_size, t},
                           Divides{"num_attention_heads", config.num_attention_heads, t},
                           Divides{"num_key_value_heads", config.num_key_value_heads, t},
                           Divides{"intermediate_size", config.intermediate_size, t},
                           Divides{"num_hidden_layers", config.num_hidden_layers, p.pp_size}}) {
    if (d.value % d.by != 0) {
      return Invalid(std::string(d.what) + " " + std::to_string(d.value) +
                     " is not divisible by the " + (d.by == t ? "tensor" : "pipeline") +
                     "-parallel size " + std::to_string(d.by));
    }
  }
  const int layers_per_stage = config.num_hidden_layers / p.pp_size;
  const int first_layer = p.pp_rank * layers_per_stage;
  std::map<std::string, Expected> expected = ExpectedTensors(config);
  std::vector<ShardSpec> out;
  for (const netloader::ShardLayout& file : layout.shards) {
    for (const netloader::TensorSpec& tensor : file.tensors) {
      auto it = expected.find(tensor.name);
      if (it == expected.end()) {
        return Invalid(file.path + ": unexpected tensor '" + tensor.name + "' for this config");
      }
      const Expected e = it->second;
      expected.erase(it);
      if (tensor.dtype != netloader::DType::kF32 || tensor.shape != e.shape) {
        return Invalid(file.path + ": tensor '" + tensor.name + "' is " +
                       std::string(netloader::DTypeName(tensor.dtype)) + ShapeString(tensor.shape) +
                       ", the config needs F32" + ShapeString(e.shape));
      }
      const bool mine = e.owner == kFirst ? p.first_stage()
                        : e.owner == kLast
                            ? p.last_stage()
                            : (e.owner >= first_layer && e.owner < first_layer + layers_per_stage);
      if (!mine) continue;
      ShardSpec spec{file.path, tensor, e.split_dim, tensor.shape, 0};
      if (e.split_dim >= 0) {
        spec.shape[e.split_dim] /= t;
        spec.start = spec.shape[e.split_dim] * p.tp_rank;
      }
      out.push_back(std::move(spec));
    }
  }
  if (!expected.empty()) {
    return Invalid("checkpoint lacks tensor '" + expected.begin()->first + "' (and " +
                   std::to_string(expected.size() - 1) + " more) that the config needs");
  }
  return out;
}

Weights::Weights(std::vector<ShardSpec> specs) : specs_(std::move(specs)) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    data_.emplace_back(specs_[i].size_bytes() / sizeof(float));
    index_[specs_[i].full.name] = i;
  }
}

netloader::ModelView Weights::view() {
  netloader::ModelView view;
  for (size_t i = 0; i < specs_.size(); ++i) {
    view.tensors.push_back({specs_[i].full.name, netloader::DType::kF32, specs_[i].shape,
                            data_[i].data(), specs_[i].size_bytes()});
  }
  return view;
}

Status Weights::LoadFromDisk(const std::set<std::string>& except) {
  // A whole tensor or a block of its rows is one run of bytes in its file: all of them are read
  // in one ReadTensors call, as pieces of a layout that name those bytes. A block of columns is
  // read as the whole tensor, one at a time, keeping each row's part.
  netloader::CheckpointLayout pieces;
  netloader::ModelView into;
  std::vector<size_t> column_blocks;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ShardSpec& s = specs_[i];
    if (except.count(s.full.name)) continue;
    if (s.split_dim >= 1) {
      column_blocks.push_back(i);
      continue;
    }
    const uint64_t row_bytes = s.full.shape.size() == 2 ? s.full.shape[1] * sizeof(float) : 0;
    netloader::TensorSpec piece = s.full;
    piece.size_bytes = s.size_bytes();
    piece.file_offset += static_cast<uint64_t>(s.start) * row_bytes;
    if (pieces.shards.empty() || pieces.shards.back().path != s.path) {
      pieces.shards.push_back({s.path, {}, {}});
    }
    pieces.shards.back().tensors.push_back(piece);
    into.tensors.push_back({piece.name, piece.dtype, s.shape, data_[i].data(), piece.size_bytes});
  }
  Status status = netloader::ReadTensors(pieces, into);
  for (size_t i : column_blocks) {
    if (!status.ok()) break;
    const ShardSpec& s = specs_[i];
    std::vector<float> whole(s.full.size_bytes / sizeof(float));
    status = netloader::ReadTensors(
        {{{s.path, {}, {s.full}}}},
        {{{s.full.name, s.full.dtype, s.full.shape, whole.data(), s.full.size_bytes}}});
    const size_t cols = s.shape[1], full_cols = s.full.shape[1];
    for (size_t r = 0; status.ok() && r < static_cast<size_t>(s.shape[0]); ++r) {
      std::memcpy(&data_[i][r * cols], &whole[r * full_cols + s.start], cols * sizeof(float));
    }
  }
  return status;
}

const float* Weights::get(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : data_[it->second].data();
}

uint64_t Weights::total_bytes() const {
  uint64_t total = 0;
  for (const ShardSpec& s : specs_) total += s.size_bytes();
  return total;
}

void Weights::CorruptOneBit() {
  for (std::vector<float>& tensor : data_) {
    if (tensor.empty()) continue;
    uint32_t bits;
    std::memcpy(&bits, &tensor[tensor.size() / 2], sizeof(bits));
    bits ^= 1u;
    std::memcpy(&tensor[tensor.size() / 2], &bits, sizeof(bits));
    return;
  }
}

namespace {

class LocalComm : public Comm {
 public:
  void AllReduceSumTp(float*, int) override {}
  int ArgmaxTp(const float* logits, int count, int offset) override {
    int best = 0;
    for (int i = 1; i < count; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return offset + best;
  }
  void SendNextStage(const float*, int) override {}
  void RecvPrevStage(float*, int) override {}
  uint64_t BroadcastFromLast(uint64_t value) override { return value; }
  uint64_t XorTp(uint64_t value) override { return value; }
  int BroadcastFromFirst(int value) override { return value; }
  std::vector<std::string> GatherToFirst(const std::string& text) override { return {text}; }
  void WaitForTurn() override {}
  void PassTurn() override {}
};

// The engine's own collectives are plain blocking MPI calls on MPI_COMM_WORLD, as in any MPI
// program: if one rank dies, mpirun takes the whole instance down. (netloader's transfers, which
// cross instances, are the ones that need deadlines.)
class MpiComm : public Comm {
 public:
  explicit MpiComm(const Parallel& p) : p_(p) {
    Check(MPI_Comm_split(MPI_COMM_WORLD, p.pp_rank, p.tp_rank, &tp_), "MPI_Comm_split");
  }
  ~MpiComm() override { MPI_Comm_free(&tp_); }
  void AllReduceSumTp(float* data, int count) override {
    if (p_.tp_size > 1) {
      Check(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_FLOAT, MPI_SUM, tp_), "MPI_Allreduce");
    }
  }
  int ArgmaxTp(const float* logits, int count, int offset) override {
    struct {
      float value;
      int index;
    } mine{logits[0], offset}, best{};
    for (int i = 1; i < count; ++i) {
      if (logits[i] > mine.value) mine = {logits[i], offset + i};
    }
    // MAXLOC breaks ties by the lower index, as the local loop does.
    Check(MPI_Allreduce(&mine, &best, 1, MPI_FLOAT_INT, MPI_MAXLOC, tp_), "MPI_Allreduce");
    return best.index;
  }
  void SendNextStage(const float* data, int count) override {
    Check(MPI_Send(data, count, MPI_FLOAT, p_.rank() + p_.tp_size, 7, MPI_COMM_WORLD), "MPI_Send");
  }
  void RecvPrevStage(float* data, int count) override {
    Check(MPI_Recv(data, count, MPI_FLOAT, p_.rank() - p_.tp_size, 7, MPI_COMM_WORLD,
                   MPI_STATUS_IGNORE),
          "MPI_Recv");
  }
  uint64_t BroadcastFromLast(uint64_t value) override {
    Check(MPI_Bcast(&value, 1, MPI_UINT64_T, (p_.pp_size - 1) * p_.tp_size, MPI_COMM_WORLD),
          "MPI_Bcast");
    return value;
  }
  uint64_t XorTp(uint64_t value) override {
    uint64_t out = 0;
    Check(MPI_Allreduce(&value, &out, 1, MPI_UINT64_T, MPI_BXOR, tp_), "MPI_Allreduce");
    return out;
  }
  int BroadcastFromFirst(int value) override {
    Check(MPI_Bcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
    return value;
  }
  std::vector<std::string> GatherToFirst(const std::string& text) override {
    int length = static_cast<int>(text.size());
    std::vector<int> lengths(p_.rank() == 0 ? p_.world() : 0);
    Check(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD),
          "MPI_Gather");
    std::vector<int> offsets(lengths.size());
    int total = 0;
    for (size_t r = 0; r < lengths.size(); ++r) {
      offsets[r] = total;
      total += lengths[r];
    }
    std::string all(static_cast<size_t>(total), '\0');
    Check(MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(),
                      MPI_CHAR, 0, MPI_COMM_WORLD),
          "MPI_Gatherv");
    std::vector<std::string> out;
    for (size_t r = 0; r < lengths.size(); ++r) out.push_back(all.substr(offsets[r], lengths[r]));
    return out;
  }
  void WaitForTurn() override {
    int turn = 0;
    if (p_.rank() > 0) {
      Check(MPI_Recv(&turn, 1, MPI_INT, p_.rank() - 1, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
            "MPI_Recv");
    }
  }
  void PassTurn() override {
    int turn = 0;
    if (p_.rank() + 1 < p_.world()) {
      Check(MPI_Send(&turn, 1, MPI_INT, p_.rank() + 1, 8, MPI_COMM_WORLD), "MPI_Send");
    }
  }

 private:
  static void Check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    std::fprintf(stderr, "netloader-llama: %s failed (MPI error %d); aborting the instance\n", what,
                 rc);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  Parallel p_;
  MPI_Comm tp_ = MPI_COMM_NULL;
};

}  // namespace

std::unique_ptr<Comm> MakeLocalComm() { return std::make_unique<LocalComm>(); }
std::unique_ptr<Comm> MakeMpiComm(const Parallel& parallel) {
  return std::make_unique<MpiComm>(parallel);
}

Engine::Engine(const ModelConfig& config, const Parallel& parallel, const Weights& weights,
               Comm& comm)
    : config_(config), parallel_(parallel), weights_(weights), comm_(comm) {
  layer_count_ = config.num_hidden_layers / parallel.pp_size;
  first_layer_ = parallel.pp_rank * layer_count_;
}

void Engine::Layer(int layer, float* x, int position) {
  const ModelConfig& c = config_;
  const int d = c.hidden_size, hd = c.head_dim(), t = parallel_.tp_size;
  const int heads = c.num_attention_heads / t, kv_heads = c.num_key_value_heads / t;
  const int group = c.num_attention_heads / c.num_key_value_heads;
  const int inter = c.intermediate_size / t;
  std::vector<float> h(d), q(heads * hd), k(kv_heads * hd), v(kv_heads * hd), attn(heads * hd);
  std::vector<float> out(d);

  RmsNorm(h.data(), x, weights_.get(LayerName(layer, "input_layernorm.weight")), d, c.rms_norm_eps);
  MatVec(q.data(), weights_.get(LayerName(layer, "self_attn.q_proj.weight")), h.data(), heads * hd,
         d);
  MatVec(k.data(), weights_.get(LayerName(layer, "self_attn.k_proj.weight")), h.data(),
         kv_heads * hd, d);
  MatVec(v.data(), weights_.get(LayerName(layer, "self_attn.v_proj.weight")), h.data(),
         kv_heads * hd, d);
  for (int i = 0; i < heads; ++i) Rope(&q[i * hd], hd, position, c.rope_theta);
  for (int i = 0; i < kv_heads; ++i) Rope(&k[i * hd], hd, position, c.rope_theta);
  std::vector<float>& k_cache = k_cache_[layer - first_layer_];
  std::vector<float>& v_cache = v_cache_[layer - first_layer_];
  k_cache.insert(k_cache.end(), k.begin(), k.end());
  v_cache.insert(v_cache.end(), v.begin(), v.end());

  const int positions = position + 1;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> scores(positions);
  for (int i = 0; i < heads; ++i) {
    const int kv = i / group;
    float max_score = -INFINITY;
    for (int p = 0; p < positions; ++p) {
      const float* key = &k_cache[(static_cast<size_t>(p) * kv_heads + kv) * hd];
      float dot = 0;
      for (int j = 0; j < hd; ++j) dot += q[i * hd + j] * key[j];
      scores[p] = dot * scale;
      max_score = std::max(max_score, scores[p]);
    }
    float total = 0;
    for (float& s : scores) total += (s = std::exp(s - max_score));
    float* o = &attn[i * hd];
    std::fill(o, o + hd, 0.0f);
    for (int p = 0; p < positions; ++p) {
      const float* value = &v_cache[(static_cast<size_t>(p) * kv_heads + kv) * hd];
      const float w = scores[p] / total;
      for (int j = 0; j < hd; ++j) o[j] += w * value[j];
    }
  }
  // Row-parallel o_proj: each rank's partial sum over its heads, then all-reduce.
  MatVec(out.data(), weights_.get(LayerName(layer, "self_attn.o_proj.weight")), attn.data(), d,
         heads * hd);
  comm_.AllReduceSumTp(out.data(), d);
  for (int i = 0; i < d; ++i) x[i] += out[i];

  std::vector<float> gate(inter), up(inter);
  RmsNorm(h.data(), x, weights_.get(LayerName(layer, "post_attention_layernorm.weight")), d,
          c.rms_norm_eps);
  MatVec(gate.data(), weights_.get(LayerName(layer, "mlp.gate_proj.weight")), h.data(), inter, d);
  MatVec(up.data(), weights_.get(LayerName(layer, "mlp.up_proj.weight")), h.data(), inter, d);
  for (int i = 0; i < inter; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  MatVec(out.data(), weights_.get(LayerName(layer, "mlp.down_proj.weight")), gate.data(), d, inter);
  comm_.AllReduceSumTp(out.data(), d);
  for (int i = 0; i < d; ++i) x[i] += out[i];
}

int Engine::Forward(int token, int position, uint64_t* digest) {
  const int d = config_.hidden_size;
  const int vocab = config_.vocab_size / parallel_.tp_size;
  const int vocab_start = vocab * parallel_.tp_rank;
  std::vector<float> x(d, 0.0f);
  if (parallel_.first_stage()) {
    // The embedding is split by vocabulary: the rank holding the row contributes it.
    if (token >= vocab_start && token < vocab_start + vocab) {
      const float* row =
          weights_.get("model.embed_tokens.weight") + static_cast<size_t>(token - vocab_start) * d;
      std::copy(row, row + d, x.begin());
    }
    comm_.AllReduceSumTp(x.data(), d);
  } else {
    comm_.RecvPrevStage(x.data(), d);
  }
  for (int l = first_layer_; l < first_layer_ + layer_count_; ++l) Layer(l, x.data(), position);
  int next = 0;
  if (parallel_.last_stage()) {
    std::vector<float> h(d), logits(vocab);
    RmsNorm(h.data(), x.data(), weights_.get("model.norm.weight"), d, config_.rms_norm_eps);
    MatVec(logits.data(), weights_.get("lm_head.weight"), h.data(), vocab, d);
    *digest = XXH3_64bits_withSeed(logits.data(), logits.size() * sizeof(float), *digest);
    next = comm_.ArgmaxTp(logits.data(), vocab, vocab_start);
  } else {
    comm_.SendNextStage(x.data(), d);
  }
  return static_cast<int>(comm_.BroadcastFromLast(static_cast<uint64_t>(next)));
}

Generation Engine::Generate(const std::vector<int>& prompt, int max_new_tokens,
                            const std::function<void(int token)>& on_token) {
  k_cache_.assign(layer_count_, {});
  v_cache_.assign(layer_count_, {});
  uint64_t digest = static_cast<uint64_t>(parallel_.tp_rank) + 1;
  Generation out;
  int position = 0, next = 0;
  for (int token : prompt) next = Forward(token, position++, &digest);
  for (int i = 0; i < max_new_tokens; ++i) {
    out.tokens.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 < max_new_tokens) next = Forward(next, position++, &digest);
  }
  if (parallel_.last_stage()) digest = comm_.XorTp(digest);
  out.logits_digest = comm_.BroadcastFromLast(digest);
  return out;
}

std::vector<int> Tokenize(const std::string& text) {
  return std::vector<int>(reinterpret_cast<const unsigned char*>(text.data()),
                          reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

std::string Detokenize(const std::vector<int>& tokens) {
  std::string out;
  for (int t : tokens) {
    if (t >= 32 && t < 127 && t != '\\') {
      out += static_cast<char>(t);
    } else if (t < 256) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", t);
      out += buf;
    } else {
      out += "<" + std::to_string(t) + ">";
    }
  }
  return out;
}

}  // namespace llama
