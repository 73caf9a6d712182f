// pybind11 bindings: the backend class (a c10d::Backend subclass, so torch's
// ProcessGroup can hold it) and a few introspection helpers.
#include <torch/csrc/utils/pybind.h>

#include "core/flight_recorder.h"
#include "core/logging.h"
#include "core/version.h"
#include "torch/backend.h"
#include "torch/kernel_ops.h"

namespace py = pybind11;
using agentcomm::torch_adapter::AgentBackend;

PYBIND11_MODULE(_C, m) {
  m.doc() = "agentcomm native extension";
  // The base class must be registered (by torch.distributed) before ours.
  py::module_::import("torch.distributed");
  py::class_<AgentBackend, c10d::Backend, c10::intrusive_ptr<AgentBackend>>(m, "ProcessGroupAgentComm")
      .def(py::init([](const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, double timeoutSeconds,
                       const std::string& groupName) {
             return c10::make_intrusive<AgentBackend>(
                 store, rank, size, std::chrono::milliseconds(static_cast<int64_t>(timeoutSeconds * 1000.0)),
                 groupName);
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout_seconds"), py::arg("group_name") = "",
           py::call_guard<py::gil_scoped_release>())
      // torch's split_group deep-copies `options` into the new group's; torch's
      // Options object cannot be copied, and None makes splitGroup ask
      // getBackendOptions() (this group's timeout and name) instead.
      .def_property_readonly("options", [](const AgentBackend&) { return py::none(); },
                             "None: split_group then takes this group's timeout and name")
      // torch's new_group asks the default group's backend, when that can
      // split and a device is bound, to take part in a split that leaves this
      // rank out (ncclCommSplit needs every rank). A new group here
      // bootstraps through the store among its members only: nothing to do.
      .def("perform_nocolor_split", [](AgentBackend&, const py::object&) {}, py::arg("device"),
           "no-op: a rank outside a new group takes no part in making it")
      .def_property_readonly("transport", &AgentBackend::transportName)
      .def_property_readonly("local_ranks", &AgentBackend::localRanks,
                             "this group's ranks on this host (host name, boot id and network namespace match), ascending")
      .def("error", &AgentBackend::errorReason,
           "None while the group works; after a failure (a peer's, a timeout, abort()) the first failure's text")
      .def("abort", &AgentBackend::abort, py::call_guard<py::gil_scoped_release>(),
           "Fails every op of this group, blocked ones within milliseconds, from any thread; tells the peers")
      .def("sparse_all_reduce", &AgentBackend::sparseAllreduce, py::arg("tensor"), py::arg("residual") = py::none(),
           py::arg("k"), py::arg("method") = "topk", py::arg("seed") = 0, py::arg("scale") = 1.0,
           py::arg("stats") = py::none(), py::call_guard<py::gil_scoped_release>(),
           "Sparse (top-k / DGC / random-k) all-reduce of a float32 tensor in place; returns a Work")
      .def("quantized_all_reduce", &AgentBackend::quantizedAllreduce, py::arg("tensor"),
           py::arg("residual") = py::none(), py::arg("server_residual") = py::none(), py::arg("bits") = 8,
           py::arg("block") = 256, py::arg("seed") = 0, py::arg("scale") = 1.0, py::arg("stats") = py::none(),
           py::call_guard<py::gil_scoped_release>(),
           "Quantized (8/4/1-bit) reduce-scatter + all-gather of a float32 tensor in place; returns a Work");
  m.def("version", [] { return std::string(agentcomm::kVersion); });
  m.def("cuda_built", &agentcomm::torch_adapter::cudaBuilt,
        "Whether this build handles CUDA tensors (it was compiled against a torch with CUDA)");
  m.def("set_log_rank", &agentcomm::setLogRank);
  m.def(
      "flight_records", [](const std::string& reason) { return agentcomm::FlightRecorder::dumpAll(reason, agentcomm::logRank()); },
      py::arg("reason") = "on demand", "Every live group's flight recorder as one JSON text (the dump's format)");
  m.def(
      "write_flight_records",
      [](const std::string& dir, const std::string& reason) {
        return agentcomm::FlightRecorder::writeAll(dir, reason, agentcomm::logRank());
      },
      py::arg("dir"), py::arg("reason") = "on demand", py::call_guard<py::gil_scoped_release>(),
      "Writes flight_records to DIR/agentcomm_trace_rank<R>_pid<P>.json; returns the path");
  m.def("reduce_into", &agentcomm::torch_adapter::reduceInto, py::arg("out"), py::arg("a"), py::arg("b"),
        py::arg("op") = "sum", py::arg("simd") = "auto", py::call_guard<py::gil_scoped_release>(),
        "out = a (op) b with agentcomm's reduction kernel (CPU: simd auto, scalar, avx2, avx512; CUDA: current stream)");
  m.def("pack_into", &agentcomm::torch_adapter::packInto, py::arg("tensors"), py::arg("flat"),
        py::arg("divide_by") = 1.0, py::arg("multiply_by") = 1.0, py::call_guard<py::gil_scoped_release>(),
        "flat[...] = concat(tensors) / divide_by * multiply_by, in one pass");
  m.def("unpack_from", &agentcomm::torch_adapter::unpackFrom, py::arg("flat"), py::arg("tensors"),
        py::arg("divide_by") = 1.0, py::arg("multiply_by") = 1.0, py::call_guard<py::gil_scoped_release>(),
        "tensors[i][...] = the matching slice of flat / divide_by * multiply_by, in one pass");
  using namespace agentcomm::torch_adapter;
  m.def("topk", &topkKernel, py::arg("data"), py::arg("k"), py::arg("add") = py::none(),
        py::arg("error_feedback") = false, py::arg("sampled") = false, py::arg("seed") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "(indices int32 ascending, values) of the k largest |data| (+ add first); error_feedback zeroes them in data");
  m.def("quantize", &quantizeKernel, py::arg("data"), py::arg("bits"), py::arg("block") = 256, py::arg("seed") = 0,
        py::arg("add") = py::none(), py::arg("error_feedback") = false, py::arg("codes") = py::none(),
        py::arg("scales") = py::none(), py::call_guard<py::gil_scoped_release>(),
        "(codes uint8, scales float32) of data (+ add first); error_feedback leaves data - decoded in data");
  m.def("dequantize", &dequantizeKernel, py::arg("codes"), py::arg("scales"), py::arg("out"), py::arg("bits"),
        py::arg("block") = 256, py::arg("alpha") = 1.0, py::arg("accumulate") = false,
        py::call_guard<py::gil_scoped_release>(), "out (+)= decode(codes, scales) * alpha");
  m.def("cast_into", &castKernel, py::arg("src"), py::arg("dst"), py::arg("scale") = 1.0,
        py::call_guard<py::gil_scoped_release>(), "dst = src * scale across float32 <-> float16/bfloat16");
  m.def("quant_slice", &quantSliceOf, py::arg("count"), py::arg("block"), py::arg("rank"), py::arg("size"),
        "(offset, count) of the block-aligned slice a rank owns in a quantized all-reduce");
  m.def("randomk_indices", &randomkIndices, py::arg("seed"), py::arg("n"), py::arg("k"),
        "the k indices random-k picks for this seed (identical on every rank)");
  m.def("randomk", &randomkKernel, py::arg("data"), py::arg("k"), py::arg("seed"), py::arg("add") = py::none(),
        py::arg("error_feedback") = false, py::call_guard<py::gil_scoped_release>(),
        "the k values at randomk_indices(seed, n, k) of data (+ add first); error_feedback zeroes them in data");
  m.def("randomk_scatter", &randomkScatterKernel, py::arg("values"), py::arg("out"), py::arg("seed"),
        py::arg("scale") = 1.0, py::call_guard<py::gil_scoped_release>(),
        "out[randomk_indices(seed, out.numel(), values.numel())] = values * scale; the rest of out is left alone");
  m.def("simd_level", &agentcomm::torch_adapter::simdLevelName, "the vector level the reduction kernels use");
}
