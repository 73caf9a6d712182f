// The collectives of AgentBackend: per op, validate (tensor_views.h) ->
// contiguous buffers or a CUDA stage -> Work -> one communicator call.
#include <ATen/Functions.h>
#include <c10/util/Exception.h>

#include <numeric>

#include "core/env.h"
#include "torch/backend.h"

namespace agentcomm::torch_adapter {

namespace {

// Whether an op may run on the calling thread (Scheduler::collective's
// mayInline): a small one always, one of any size when its caller waits for
// it at once (torch sets opts.asyncOp = false for async_op=False calls).
// Either way the thread that would only wait does the work, which saves the
// two hand-offs (to the worker, back from the completion pool) that each cost
// a wake-up on a busy CPU; async ops keep the worker so that they overlap the
// caller's compute.
template <typename Options>
bool mayRunInline(size_t bytes, const Options& opts) {
  return bytes <= kInlineMaxBytes || !opts.asyncOp;
}

// A staged all_reduce of a CUDA tensor at least this large pipelines its copies.
constexpr size_t kPipelineMinBytes = size_t{8} << 20;

void checkRoot(int64_t root, int size, const char* op) {
  TORCH_CHECK_VALUE(root >= 0 && root < size, "agentcomm ", op, ": root ", root,
                    " is not a rank of this group of size ", size);
}

// The per-rank (offset, count) layout of an all_to_all side, in core elements.
void splitLayout(const std::vector<int64_t>& rows, int64_t rowElems, size_t unit, std::vector<size_t>& offsets,
                 std::vector<size_t>& counts) {
  size_t off = 0;
  for (int64_t r : rows) {
    offsets.push_back(off);
    counts.push_back(static_cast<size_t>(r * rowElems) * unit);
    off += counts.back();
  }
}

}  // namespace

// ---------------------------------------------------------------- reductions

c10::intrusive_ptr<c10d::Work> AgentBackend::allreduce(Tensors& tensors, const c10d::AllreduceOptions& opts) {
  TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm all_reduce: expected one tensor per rank, got ", tensors.size());
  auto [rop, factor] = mapReduceOp(opts.reduceOp, "all_reduce");
  if (anyCuda(tensors)) {
    if (auto work = allreduceOnDevice(tensors[0], rop, factor, opts)) return work;
  }
  return onHost("all_reduce", [&, rop = rop, factor = factor](const StagePtr& stage, Tensors& tensors) {
    const at::Tensor t = tensors[0];
    View v = reduceView(t, "all_reduce", rop);
    ReduceOp op = rop;
    const bool premul = takePremul(op);
    at::Tensor buf = contiguousBuffer(t);
    return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:all_reduce", tensors, opts.timeout,
                             [=, this](Deadline d) {
                               if (premul) buf.mul_(factor);  // in place: all_reduce overwrites it anyway
                               algorithms::AllReduceOptions o;
                               o.data = buf.data_ptr();
                               o.count = v.count;
                               comm_->allReduce(o, v.dt, op, d);
                               copyBack(t, buf);
                             },
                             mayRunInline(v.count * elementSize(v.dt), opts), stage);
  }, tensors);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allreduceOnDevice(const at::Tensor& ct, ReduceOp rop, double factor,
                                                               const c10d::AllreduceOptions& opts) {
  if (comm_->wholeGroupShm() && size_ > 1 && rop != ReduceOp::PremulSum && envFlag("AGENTCOMM_CUDA_IPC", true) &&
      cuda().peersCanReduce(ct, rop)) {
    // Every rank of the group is on this host: reduce on the device over CUDA IPC.
    const FinalScale scale = rop == ReduceOp::Avg ? FinalScale::divide(size_) : FinalScale::none();
    StagePtr stage = cuda().streamStage(ct);
    const auto timeout = opts.timeout == c10d::kUnsetTimeout ? timeout_ : opts.timeout;
    return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:all_reduce", {ct}, opts.timeout,
                             [=, this](Deadline d) {
                               auto exchange = [&](const void* mine, void* all, size_t bytes) {
                                 algorithms::AllGatherOptions o;
                                 o.input = mine;
                                 for (int r = 0; r < size_; ++r) {
                                   o.outputs.push_back(static_cast<uint8_t*>(all) + bytes * static_cast<size_t>(r));
                                   o.counts.push_back(bytes);
                                 }
                                 comm_->allGather(o, DataType::UInt8, d);
                               };
                               cuda().allReduce(ct, rop, scale, *stage, exchange, timeout);
                             },
                             false, stage);
  }
  const size_t bytes = static_cast<size_t>(ct.numel()) * ct.element_size();
  if (!ct.is_contiguous() || bytes < kPipelineMinBytes || !envFlag("AGENTCOMM_CUDA_PIPELINE", true)) return {};
  // A large CUDA tensor reduced through host memory (across hosts, or with
  // CUDA IPC off): chunk by chunk, so that its copies down, the host algorithm
  // on the wire and its copies up overlap (CudaStage::pipeline). Every rank
  // cuts the same chunks (same count, same rule), one collective each.
  at::Tensor host = ct;
  std::vector<at::Tensor*> ptrs{&host};
  StagePtr stage = cuda().stage(ptrs, "all_reduce");  // host: the pinned mirror now
  View v = reduceView(host, "all_reduce", rop);
  const bool premul = takePremul(rop);
  stage->setPipelined();
  const size_t es = elementSize(v.dt);
  TORCH_INTERNAL_ASSERT(es == static_cast<size_t>(host.element_size()));
  // About 8 chunks of 1..32 MiB, whole elements.
  const size_t chunk = std::clamp<size_t>(v.count * es / 8, size_t{1} << 20, size_t{32} << 20) / es * es;
  return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:all_reduce", {host}, opts.timeout,
                           [=, this](Deadline d) {
                             const at::Tensor bytes = host.reshape({-1}).view(at::kByte);
                             stage->pipeline(chunk, [&](size_t off, size_t len) {
                               if (premul)  // this chunk's elements, in place
                                 bytes.narrow(0, static_cast<int64_t>(off), static_cast<int64_t>(len))
                                     .view(host.scalar_type())
                                     .mul_(factor);
                               algorithms::AllReduceOptions o;
                               o.data = static_cast<uint8_t*>(host.data_ptr()) + off;
                               o.count = len / es;
                               comm_->allReduce(o, v.dt, rop, d);
                             });
                           },
                           false, stage);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allreduce_coalesced(Tensors& tensors,
                                                                 const c10d::AllreduceCoalescedOptions& opts) {
  return onHost("all_reduce_coalesced", [&](const StagePtr& stage, Tensors& tensors) {
    TORCH_CHECK_VALUE(!tensors.empty(), "agentcomm all_reduce_coalesced: no tensors");
    auto [rop, factor] = mapReduceOp(opts.reduceOp, "all_reduce_coalesced");
    Tensors flatParts;
    for (auto& t : tensors) {
      reduceView(t, "all_reduce_coalesced", rop);
      checkSameDtype(t, tensors[0], "all_reduce_coalesced");
      flatParts.push_back(t.reshape({-1}));
    }
    View v = reduceView(tensors[0], "all_reduce_coalesced", rop);
    const bool premul = takePremul(rop);
    at::Tensor flat = at::cat(flatParts);  // one buffer, one collective
    Tensors outs = tensors;
    return enqueueCollective(c10d::OpType::ALLREDUCE_COALESCED, "agentcomm:all_reduce_coalesced", tensors,
                             opts.timeout,
                             [=, this, rop = rop, factor = factor](Deadline d) {
                               if (premul) flat.mul_(factor);
                               algorithms::AllReduceOptions o;
                               o.data = flat.data_ptr();
                               o.count = flat.numel();
                               comm_->allReduce(o, v.dt, rop, d);
                               int64_t off = 0;
                               for (const auto& t : outs) {
                                 const_cast<at::Tensor&>(t).copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
                                 off += t.numel();
                               }
                             },
                             false, stage);
  }, tensors);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::reduce(Tensors& tensors, const c10d::ReduceOptions& opts) {
  return onHost("reduce", [&](const StagePtr& stage, Tensors& tensors) {
    TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm reduce: expected one tensor per rank, got ", tensors.size());
    checkRoot(opts.rootRank, size_, "reduce");
    auto [rop, factor] = mapReduceOp(opts.reduceOp, "reduce");
    const at::Tensor t = tensors[0];
    View v = reduceView(t, "reduce", rop);
    const bool premul = takePremul(rop);
    const int root = static_cast<int>(opts.rootRank);
    // A non-root's input must stay unchanged: it reduces a scaled copy.
    at::Tensor buf = premul && rank_ != root ? at::mul(t.contiguous(), factor) : contiguousBuffer(t);
    return enqueueCollective(c10d::OpType::REDUCE, "agentcomm:reduce", tensors, opts.timeout,
                             [=, this, rop = rop, factor = factor](Deadline d) {
                               if (premul && rank_ == root) buf.mul_(factor);  // the root's result replaces it
                               algorithms::ReduceOptions o;
                               o.data = buf.data_ptr();
                               o.count = v.count;
                               o.root = root;
                               comm_->reduce(o, v.dt, rop, d);
                               if (rank_ == root) copyBack(t, buf);
                             },
                             mayRunInline(v.count * elementSize(v.dt), opts), stage);
  }, tensors);
}

namespace {
// The reduce-scatter of `blocks` (this rank's contribution to each rank's block) into out.
algorithms::ReduceScatterOptions reduceScatterOf(const Tensors& blocks, const at::Tensor& out) {
  algorithms::ReduceScatterOptions o;
  for (const auto& b : blocks) {
    o.inputs.push_back(b.data_ptr());
    o.counts.push_back(static_cast<size_t>(b.numel()));
  }
  o.output = out.data_ptr();
  return o;
}
}  // namespace

c10::intrusive_ptr<c10d::Work> AgentBackend::reduce_scatter(Tensors& outputs, TensorLists& inputs,
                                                            const c10d::ReduceScatterOptions& opts) {
  return onHost("reduce_scatter", [&](const StagePtr& stage, Tensors& outputs, TensorLists& inputs) {
    TORCH_CHECK_VALUE(outputs.size() == 1 && inputs.size() == 1, "agentcomm reduce_scatter: expected one output and "
                      "one input list per rank");
    TORCH_CHECK_VALUE(static_cast<int>(inputs[0].size()) == size_, "agentcomm reduce_scatter: the input list has ",
                      inputs[0].size(), " tensors but the group has ", size_, " ranks");
    auto [rop, factor] = mapReduceOp(opts.reduceOp, "reduce_scatter");
    const at::Tensor out = outputs[0];
    View v = reduceView(out, "reduce_scatter", rop);
    const bool premul = takePremul(rop);
    Tensors blocks;
    uint64_t total = 0;
    for (auto& t : inputs[0]) {
      reduceView(t, "reduce_scatter", rop);
      checkSameDtype(t, out, "reduce_scatter");
      blocks.push_back(premul ? at::mul(t.contiguous(), factor) : contiguousBuffer(t));  // inputs stay unchanged
      total += t.numel();
    }
    TORCH_CHECK_VALUE(inputs[0][rank_].numel() == out.numel(), "agentcomm reduce_scatter: the output has ",
                      out.numel(), " elements but this rank's input block has ", inputs[0][rank_].numel());
    at::Tensor obuf = contiguousBuffer(out);
    return enqueueCollective(c10d::OpType::REDUCE_SCATTER, "agentcomm:reduce_scatter", outputs, opts.timeout,
                             [=, this, rop = rop](Deadline d) {
                               comm_->reduceScatter(reduceScatterOf(blocks, obuf), v.dt, rop, d);
                               copyBack(out, obuf);
                             },
                             mayRunInline(total * elementSize(v.dt), opts), stage);
  }, outputs, inputs);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::_reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                                  const c10d::ReduceScatterOptions& opts) {
  Tensors outs = {output}, ins = {input};
  return reduce_scatter_tensor_coalesced(outs, ins, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::reduce_scatter_tensor_coalesced(Tensors& outputs, Tensors& inputs,
                                                                             const c10d::ReduceScatterOptions& opts) {
  return onHost("reduce_scatter_tensor", [&](const StagePtr& stage, Tensors& outputs, Tensors& inputs) {
    TORCH_CHECK_VALUE(outputs.size() == inputs.size(), "agentcomm reduce_scatter_tensor: ", outputs.size(),
                      " outputs but ", inputs.size(), " inputs");
    auto [rop, factor] = mapReduceOp(opts.reduceOp, "reduce_scatter_tensor");
    const bool premul = takePremul(rop);
    std::vector<View> views;
    Tensors ins, outs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      views.push_back(reduceView(outputs[i], "reduce_scatter_tensor", rop));
      reduceView(inputs[i], "reduce_scatter_tensor", rop);
      checkSameDtype(inputs[i], outputs[i], "reduce_scatter_tensor");
      TORCH_CHECK_VALUE(inputs[i].numel() == outputs[i].numel() * size_, "agentcomm reduce_scatter_tensor: the input "
                        "has ", inputs[i].numel(), " elements, expected output size ", outputs[i].numel(),
                        " x world size ", size_);
      ins.push_back((premul ? at::mul(inputs[i].contiguous(), factor) : contiguousBuffer(inputs[i])).reshape({-1}));
      outs.push_back(contiguousBuffer(outputs[i]));
    }
    Tensors originals = outputs;
    return enqueueCollective(c10d::OpType::_REDUCE_SCATTER_BASE, "agentcomm:reduce_scatter_tensor", outputs,
                             opts.timeout,
                             [=, this, rop = rop](Deadline d) {
                               for (size_t i = 0; i < ins.size(); ++i) {
                                 comm_->reduceScatter(reduceScatterOf(ins[i].chunk(size_), outs[i]), views[i].dt,
                                                      rop, d);
                                 copyBack(originals[i], outs[i]);
                               }
                             },
                             mayRunInline(ins.size() == 1 ? ins[0].nbytes() : SIZE_MAX, opts), stage);
  }, outputs, inputs);
}

// ---------------------------------------------------------------- data movement

c10::intrusive_ptr<c10d::Work> AgentBackend::broadcast(Tensors& tensors, const c10d::BroadcastOptions& opts) {
  return onHost("broadcast", [&](const StagePtr& stage, Tensors& tensors) {
    TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm broadcast: expected one tensor per rank, got ", tensors.size());
    checkRoot(opts.rootRank, size_, "broadcast");
    TORCH_CHECK_VALUE(opts.rootTensor == 0, "agentcomm broadcast: rootTensor must be 0");
    const at::Tensor t = tensors[0];
    View v = moveView(t, "broadcast");
    at::Tensor buf = contiguousBuffer(t);
    const int root = static_cast<int>(opts.rootRank);
    return enqueueCollective(c10d::OpType::BROADCAST, "agentcomm:broadcast", tensors, opts.timeout,
                             [=, this](Deadline d) {
                               comm_->broadcast({buf.data_ptr(), v.count, root}, v.dt, d);
                               if (rank_ != root) copyBack(t, buf);
                             },
                             mayRunInline(v.count * elementSize(v.dt), opts), stage);
  }, tensors);
}

namespace {
algorithms::AllGatherOptions allGatherOf(const at::Tensor& input, const Tensors& outs, size_t unit) {
  algorithms::AllGatherOptions o;
  o.input = input.data_ptr();
  for (const auto& t : outs) {
    o.outputs.push_back(t.data_ptr());
    o.counts.push_back(static_cast<size_t>(t.numel()) * unit);
  }
  return o;
}
}  // namespace

c10::intrusive_ptr<c10d::Work> AgentBackend::allgather(TensorLists& outputs, Tensors& inputs,
                                                       const c10d::AllgatherOptions& opts) {
  TORCH_CHECK_VALUE(inputs.size() == 1 && outputs.size() == 1, "agentcomm all_gather: expected one input and one "
                    "output list per rank");
  return allgatherImpl(outputs, inputs, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allgather_coalesced(TensorLists& outputs, Tensors& inputs,
                                                                 const c10d::AllgatherOptions& opts) {
  // outputs[r][i] receives input i of rank r; allgatherImpl wants, per input, its list over ranks.
  TORCH_CHECK_VALUE(static_cast<int>(outputs.size()) == size_, "agentcomm all_gather_coalesced: ", outputs.size(),
                    " output lists for ", size_, " ranks");
  TensorLists perInput(inputs.size());
  for (size_t r = 0; r < outputs.size(); ++r) {
    TORCH_CHECK_VALUE(outputs[r].size() == inputs.size(), "agentcomm all_gather_coalesced: rank ", r,
                      "'s output list has ", outputs[r].size(), " tensors but there are ", inputs.size(), " inputs");
    for (size_t i = 0; i < inputs.size(); ++i) perInput[i].push_back(outputs[r][i]);
  }
  return allgatherImpl(perInput, inputs, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allgatherImpl(TensorLists& outputs, Tensors& inputs,
                                                           const c10d::AllgatherOptions& opts) {
  return onHost("all_gather", [&](const StagePtr& stage, TensorLists& outputs, Tensors& inputs) {
    TORCH_CHECK_VALUE(outputs.size() == inputs.size(), "agentcomm all_gather: ", inputs.size(), " inputs but ",
                      outputs.size(), " output lists");
    struct Item {
      View v;
      size_t unit;  // core elements per tensor element (bytes mode: element size)
      at::Tensor in;
      Tensors outs, originals;
    };
    std::vector<Item> items;
    Tensors flatOutputs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Item it;
      it.v = moveView(inputs[i], "all_gather");
      it.unit = unitOf(inputs[i]);
      TORCH_CHECK_VALUE(static_cast<int>(outputs[i].size()) == size_, "agentcomm all_gather: the output list has ",
                        outputs[i].size(), " tensors but the group has ", size_, " ranks");
      for (auto& o : outputs[i]) {
        moveView(o, "all_gather");
        checkSameDtype(o, inputs[i], "all_gather");
        it.outs.push_back(contiguousBuffer(o));
        it.originals.push_back(o);
        flatOutputs.push_back(o);
      }
      TORCH_CHECK_VALUE(outputs[i][rank_].numel() == inputs[i].numel(), "agentcomm all_gather: this rank's output "
                        "has ", outputs[i][rank_].numel(), " elements but its input has ", inputs[i].numel());
      it.in = contiguousBuffer(inputs[i]);
      items.push_back(std::move(it));
    }
    return enqueueCollective(c10d::OpType::ALLGATHER, "agentcomm:all_gather", flatOutputs, opts.timeout,
                             [=, this](Deadline d) {
                               for (const auto& it : items) {
                                 comm_->allGather(allGatherOf(it.in, it.outs, it.unit), it.v.dt, d);
                                 for (size_t k = 0; k < it.outs.size(); ++k) copyBack(it.originals[k], it.outs[k]);
                               }
                             },
                             false, stage);
  }, outputs, inputs);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::_allgather_base(at::Tensor& output, at::Tensor& input,
                                                             const c10d::AllgatherOptions& opts) {
  Tensors outs = {output}, ins = {input};
  return allgather_into_tensor_coalesced(outs, ins, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allgather_into_tensor_coalesced(Tensors& outputs, Tensors& inputs,
                                                                             const c10d::AllgatherOptions& opts) {
  return onHost("all_gather_into_tensor", [&](const StagePtr& stage, Tensors& outputs, Tensors& inputs) {
    TORCH_CHECK_VALUE(outputs.size() == inputs.size(), "agentcomm all_gather_into_tensor: ", outputs.size(),
                      " outputs but ", inputs.size(), " inputs");
    std::vector<View> views;
    Tensors ins, outs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      views.push_back(moveView(inputs[i], "all_gather_into_tensor"));
      moveView(outputs[i], "all_gather_into_tensor");
      checkSameDtype(inputs[i], outputs[i], "all_gather_into_tensor");
      TORCH_CHECK_VALUE(outputs[i].numel() == inputs[i].numel() * size_, "agentcomm all_gather_into_tensor: the "
                        "output has ", outputs[i].numel(), " elements, expected input size ", inputs[i].numel(),
                        " x world size ", size_);
      ins.push_back(contiguousBuffer(inputs[i]));
      outs.push_back(contiguousBuffer(outputs[i]).reshape({-1}));
    }
    Tensors originals = outputs;
    return enqueueCollective(c10d::OpType::_ALLGATHER_BASE, "agentcomm:all_gather_into_tensor", outputs,
                             opts.timeout,
                             [=, this](Deadline d) {
                               for (size_t i = 0; i < ins.size(); ++i) {
                                 comm_->allGather(allGatherOf(ins[i], outs[i].chunk(size_), unitOf(ins[i])),
                                                  views[i].dt, d);
                                 copyBack(originals[i], outs[i].view(originals[i].sizes()));
                               }
                             },
                             mayRunInline(outs.size() == 1 ? outs[0].nbytes() : SIZE_MAX, opts), stage);
  }, outputs, inputs);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::gather(TensorLists& outputs, Tensors& inputs,
                                                    const c10d::GatherOptions& opts) {
  return onHost("gather", [&](const StagePtr& stage, TensorLists& outputs, Tensors& inputs) {
    TORCH_CHECK_VALUE(inputs.size() == 1, "agentcomm gather: expected one input tensor per rank");
    checkRoot(opts.rootRank, size_, "gather");
    const int root = static_cast<int>(opts.rootRank);
    View v = moveView(inputs[0], "gather");
    const size_t unit = unitOf(inputs[0]);
    at::Tensor in = contiguousBuffer(inputs[0]);
    Tensors outs = rootListBuffers(outputs, inputs[0], rank_ == root, size_, "gather", "output");
    Tensors originals = rank_ == root ? outputs[0] : Tensors{};
    return enqueueCollective(c10d::OpType::GATHER, "agentcomm:gather", originals, opts.timeout,
                             [=, this](Deadline d) {
                               algorithms::GatherOptions o;
                               o.input = in.data_ptr();
                               o.count = v.count;
                               o.root = root;
                               for (const auto& t : outs) {
                                 o.outputs.push_back(t.data_ptr());
                                 o.counts.push_back(static_cast<size_t>(t.numel()) * unit);
                               }
                               comm_->gather(o, v.dt, d);
                               for (size_t k = 0; k < outs.size(); ++k) copyBack(originals[k], outs[k]);
                             },
                             mayRunInline(static_cast<size_t>(in.nbytes()) * (rank_ == root ? size_ : 1), opts),
                             stage);
  }, outputs, inputs);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::scatter(Tensors& outputs, TensorLists& inputs,
                                                     const c10d::ScatterOptions& opts) {
  return onHost("scatter", [&](const StagePtr& stage, Tensors& outputs, TensorLists& inputs) {
    TORCH_CHECK_VALUE(outputs.size() == 1, "agentcomm scatter: expected one output tensor per rank");
    checkRoot(opts.rootRank, size_, "scatter");
    const int root = static_cast<int>(opts.rootRank);
    const at::Tensor out = outputs[0];
    View v = moveView(out, "scatter");
    const size_t unit = unitOf(out);
    at::Tensor obuf = contiguousBuffer(out);
    Tensors ins = rootListBuffers(inputs, out, rank_ == root, size_, "scatter", "input");
    return enqueueCollective(c10d::OpType::SCATTER, "agentcomm:scatter", outputs, opts.timeout,
                             [=, this](Deadline d) {
                               algorithms::ScatterOptions o;
                               o.output = obuf.data_ptr();
                               o.count = v.count;
                               o.root = root;
                               for (const auto& t : ins) {
                                 o.inputs.push_back(t.data_ptr());
                                 o.counts.push_back(static_cast<size_t>(t.numel()) * unit);
                               }
                               comm_->scatter(o, v.dt, d);
                               copyBack(out, obuf);
                             },
                             mayRunInline(static_cast<size_t>(obuf.nbytes()) * (rank_ == root ? size_ : 1), opts),
                             stage);
  }, outputs, inputs);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::alltoall_base(at::Tensor& output, at::Tensor& input,
                                                           std::vector<int64_t>& outputSplits,
                                                           std::vector<int64_t>& inputSplits,
                                                           const c10d::AllToAllOptions& opts) {
  return onHost("all_to_all_single", [&](const StagePtr& stage, at::Tensor& output, at::Tensor& input) {
    View v = moveView(input, "all_to_all_single");
    moveView(output, "all_to_all_single");
    checkSameDtype(input, output, "all_to_all_single");
    auto rows = [&](const at::Tensor& t, std::vector<int64_t> splits, const char* which) {
      const int64_t dim0 = t.dim() > 0 ? t.size(0) : 1;
      if (splits.empty()) {
        TORCH_CHECK_VALUE(dim0 % size_ == 0, "agentcomm all_to_all_single: the ", which, " tensor's first dimension (",
                          dim0, ") is not divisible by the world size ", size_, "; pass explicit splits");
        splits.assign(size_, dim0 / size_);
      }
      TORCH_CHECK_VALUE(static_cast<int>(splits.size()) == size_, "agentcomm all_to_all_single: ", splits.size(), " ",
                        which, " splits for ", size_, " ranks");
      const int64_t sum = std::accumulate(splits.begin(), splits.end(), int64_t{0});
      TORCH_CHECK_VALUE(sum == dim0, "agentcomm all_to_all_single: the ", which, " splits add up to ", sum,
                        " but the first dimension is ", dim0);
      return splits;
    };
    const auto inSplits = rows(input, inputSplits, "input");
    const auto outSplits = rows(output, outputSplits, "output");
    const size_t unit = unitOf(input);
    const int64_t inRow = input.dim() > 0 && input.size(0) > 0 ? input.numel() / input.size(0) : 0;
    const int64_t outRow = output.dim() > 0 && output.size(0) > 0 ? output.numel() / output.size(0) : 0;
    TORCH_CHECK_VALUE(inRow == outRow || inRow == 0 || outRow == 0, "agentcomm all_to_all_single: input rows have ",
                      inRow, " elements but output rows have ", outRow);
    algorithms::AllToAllOptions o;
    splitLayout(inSplits, inRow, unit, o.inOffsets, o.inCounts);
    splitLayout(outSplits, outRow, unit, o.outOffsets, o.outCounts);
    at::Tensor in = contiguousBuffer(input), out = contiguousBuffer(output);
    const at::Tensor original = output;
    return enqueueCollective(c10d::OpType::ALLTOALL_BASE, "agentcomm:all_to_all_single", {output}, opts.timeout,
                             [=, this](Deadline d) mutable {
                               o.input = in.data_ptr();
                               o.output = out.data_ptr();
                               comm_->allToAll(o, v.dt, d);
                               copyBack(original, out);
                             },
                             mayRunInline(static_cast<size_t>(in.nbytes()), opts), stage);
  }, output, input);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::alltoall(Tensors& outputs, Tensors& inputs,
                                                      const c10d::AllToAllOptions& opts) {
  return onHost("all_to_all", [&](const StagePtr& stage, Tensors& outputs, Tensors& inputs) {
    TORCH_CHECK_VALUE(static_cast<int>(inputs.size()) == size_ && static_cast<int>(outputs.size()) == size_,
                      "agentcomm all_to_all: expected ", size_, " input and output tensors, got ", inputs.size(),
                      " and ", outputs.size());
    Tensors flatIn;
    for (auto& t : inputs) {
      moveView(t, "all_to_all");
      checkSameDtype(t, inputs[0], "all_to_all");
      flatIn.push_back(t.reshape({-1}));
    }
    for (auto& t : outputs) {
      moveView(t, "all_to_all");
      checkSameDtype(t, inputs[0], "all_to_all");
    }
    View v = moveView(inputs[0], "all_to_all");
    const size_t unit = unitOf(inputs[0]);
    at::Tensor in = at::cat(flatIn);
    std::vector<int64_t> inRows, outRows;
    int64_t outTotal = 0;
    for (int p = 0; p < size_; ++p) {
      inRows.push_back(inputs[p].numel());
      outRows.push_back(outputs[p].numel());
      outTotal += outputs[p].numel();
    }
    algorithms::AllToAllOptions o;
    splitLayout(inRows, 1, unit, o.inOffsets, o.inCounts);
    splitLayout(outRows, 1, unit, o.outOffsets, o.outCounts);
    at::Tensor out = at::empty({outTotal}, inputs[0].options());
    Tensors originals = outputs;
    return enqueueCollective(c10d::OpType::ALLTOALL, "agentcomm:all_to_all", outputs, opts.timeout,
                             [=, this](Deadline d) mutable {
                               o.input = in.data_ptr();
                               o.output = out.data_ptr();
                               comm_->allToAll(o, v.dt, d);
                               int64_t pos = 0;
                               for (const auto& t : originals) {
                                 const_cast<at::Tensor&>(t).copy_(out.narrow(0, pos, t.numel()).view(t.sizes()));
                                 pos += t.numel();
                               }
                             },
                             mayRunInline(std::max(in.nbytes(), out.nbytes()), opts), stage);
  }, outputs, inputs);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::barrier(const c10d::BarrierOptions& opts) {
  return enqueueCollective(c10d::OpType::BARRIER, "agentcomm:barrier", {}, opts.timeout,
                           [this](Deadline d) { comm_->barrier(d); }, true);
}

}  // namespace agentcomm::torch_adapter
