// pybind11 bindings: the backend class (a c10d::Backend subclass, so torch's
// ProcessGroup can hold it) and a few introspection helpers.
#include <torch/csrc/utils/pybind.h>

#include "core/logging.h"
#include "torch/backend.h"

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
      .def_property_readonly("transport", &AgentBackend::transportName);
  m.def("version", [] { return std::string("0.1.0"); });
  m.def("set_log_rank", &agentcomm::setLogRank);
  m.def("reduce_into", &agentcomm::torch_adapter::reduceInto, py::arg("out"), py::arg("a"), py::arg("b"),
        py::arg("op") = "sum", py::arg("simd") = "auto", py::call_guard<py::gil_scoped_release>(),
        "out = a (op) b with agentcomm's CPU reduction kernel (simd: auto, scalar, avx2, avx512)");
  m.def("pack_into", &agentcomm::torch_adapter::packInto, py::arg("tensors"), py::arg("flat"),
        py::arg("divide_by") = 1.0, py::arg("multiply_by") = 1.0, py::call_guard<py::gil_scoped_release>(),
        "flat[...] = concat(tensors) / divide_by * multiply_by, in one pass");
  m.def("unpack_from", &agentcomm::torch_adapter::unpackFrom, py::arg("flat"), py::arg("tensors"),
        py::arg("divide_by") = 1.0, py::arg("multiply_by") = 1.0, py::call_guard<py::gil_scoped_release>(),
        "tensors[i][...] = the matching slice of flat / divide_by * multiply_by, in one pass");
  m.def("simd_level", &agentcomm::torch_adapter::simdLevelName, "the vector level the reduction kernels use");
}
